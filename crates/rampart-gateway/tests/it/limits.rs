//! Rate limits and budgets through the gateway: virtual keys with limits in a real store, the
//! simulator upstream, the in-process limiter (and the same on Redis when
//! `RAMPART_TEST_REDIS_URL` is set).

use std::sync::Arc;
use std::time::Duration;

use rampart_gateway::Gateway;
use rampart_gateway::admission::Limits;
use rampart_gateway::keydir::KeyDirectory;
use rampart_gateway::proxy::ProxyParts;
use rampart_limits::{Backend, Limiter, LimiterConfig, TokioClock};
use rampart_store::{BudgetPeriod, BudgetSetting, LimitSettings, TeamLimitSettings};

use crate::harness::{TestGateway, TestStore, hasher, message, serve, settings, sim};

/// A limiter: in process, or on the test Redis with a fresh prefix.
pub(crate) fn limiter(redis: bool) -> Option<Limiter> {
    if !redis {
        return Some(Limiter::in_process(Arc::new(TokioClock::new())));
    }
    redis_limiter(&fresh_prefix())
}

/// A limiter on the test Redis under `prefix` (`None` when there is no test Redis).
fn redis_limiter(prefix: &str) -> Option<Limiter> {
    let config = redis_config(test_redis_url()?, prefix);
    Some(Limiter::new(&config, Arc::new(TokioClock::new())).unwrap())
}

/// `RAMPART_TEST_REDIS_URL`; `None` (said loudly) when unset, a failure when `CI` is set.
fn test_redis_url() -> Option<String> {
    let url = std::env::var("RAMPART_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty());
    if url.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but RAMPART_TEST_REDIS_URL is not"
        );
        eprintln!("SKIPPING the Redis half: RAMPART_TEST_REDIS_URL is unset");
    }
    url
}

fn fresh_prefix() -> String {
    format!("gw-{}", uuid::Uuid::new_v4().simple())
}

/// The Redis limiter on `url`, keys under `prefix`.
fn redis_config(url: String, prefix: &str) -> LimiterConfig {
    LimiterConfig {
        backend: Backend::Redis {
            url,
            prefix: prefix.to_owned(),
            timeout: Duration::from_secs(2),
        },
        ..LimiterConfig::default()
    }
}

struct Fixture {
    db: TestStore,
    gw: TestGateway,
    dir: Arc<KeyDirectory>,
    _sim: crate::harness::TestSim,
}

async fn fixture(redis: bool) -> Option<Fixture> {
    fixture_with(limiter(redis)?, Duration::from_secs(5)).await
}

/// A gateway in front of `upstream` with the keys of `dir`, limited by `limiter`, whose
/// shutdown grace is `grace`.
fn gateway(limiter: Limiter, upstream: &str, dir: &Arc<KeyDirectory>, grace: Duration) -> Gateway {
    let mut s = settings(upstream, Some("sk-ant-up"));
    s.shutdown_grace = grace;
    let parts = ProxyParts {
        limits: Some(Limits {
            limiter,
            prices: s.prices.clone(),
        }),
        ..ProxyParts::default()
    };
    Gateway::with_parts(s, dir.clone(), parts).unwrap()
}

/// A gateway on `limiter` whose shutdown grace is `grace`.
async fn fixture_with(limiter: Limiter, grace: Duration) -> Option<Fixture> {
    let db = TestStore::new().await;
    let upstream = sim(None).await;
    let dir = Arc::new(KeyDirectory::new(hasher()));
    let gw = serve(gateway(limiter, &upstream.url, &dir, grace)).await;
    Some(Fixture {
        db,
        gw,
        dir,
        _sim: upstream,
    })
}

impl Fixture {
    /// A key in team `team` with `limits`, loaded into the directory.
    async fn key(&self, team: &str, limits: LimitSettings) -> String {
        let team = match self
            .db
            .list_teams()
            .await
            .unwrap()
            .into_iter()
            .find(|t| t.name == team)
        {
            Some(t) => t,
            None => self.db.team(team).await,
        };
        let (key, _) = self.db.key_with_limits(&team, &limits).await;
        self.dir.refresh(&self.db).await.unwrap();
        key
    }

    async fn post(&self, key: &str, body: &serde_json::Value) -> reqwest::Response {
        self.gw.send("/v1/messages", key, body).await
    }

    /// A key in team `t` with the limits `set` sets.
    async fn key_in_t(&self, set: impl FnOnce(&mut LimitSettings)) -> String {
        let mut limits = LimitSettings::default();
        set(&mut limits);
        self.key("t", limits).await
    }

    /// A key in team `t` with 1,000 output tokens a minute.
    async fn otpm_key(&self) -> String {
        self.key_in_t(|l| l.otpm = Some(1_000)).await
    }

    /// A key in team `t` with one concurrency slot.
    async fn slot_key(&self) -> String {
        self.key_in_t(|l| l.concurrency = Some(1)).await
    }

    /// A key with 1,000 output tokens a minute, and the text of a stream of `content` (at most
    /// 400 tokens) that the simulator cuts after `after_events` events.
    async fn cut_stream(&self, after_events: u32, content: Option<String>) -> (String, String) {
        let key = self.otpm_key().await;
        self._sim
            .fault(serde_json::json!({"kind": "abort_stream", "after_events": after_events}))
            .await;
        let mut body = message("claude-sonnet-4-6");
        body["stream"] = serde_json::json!(true);
        body["max_tokens"] = serde_json::json!(400);
        if let Some(content) = content {
            body["messages"][0]["content"] = serde_json::json!(content);
        }
        let r = self.post(&key, &body).await;
        assert_eq!(r.status(), 200);
        let text = String::from_utf8_lossy(&r.bytes().await.unwrap_or_default()).into_owned();
        (key, text)
    }

    /// The output tokens `key` has left once its last request has settled, as the next
    /// request's headers say (that request reserves 16).
    async fn output_left(&self, key: &str) -> u64 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = self.post(key, &message("claude-sonnet-4-6")).await;
        assert_eq!(r.status(), 200);
        header(&r, "anthropic-ratelimit-output-tokens-remaining")
            .unwrap()
            .parse()
            .unwrap()
    }
}

/// A budget of one micro-dollar a day: the first request is admitted (it reserves its worst
/// case), the next finds the budget spent.
fn one_micro_a_day() -> LimitSettings {
    LimitSettings {
        budget: Some(BudgetSetting {
            micros: 1,
            period: BudgetPeriod::Day,
        }),
        ..LimitSettings::default()
    }
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

async fn rpm_limit_then_429(redis: bool) {
    let Some(f) = fixture(redis).await else {
        return;
    };
    let key = f
        .key(
            "t",
            LimitSettings {
                rpm: Some(2),
                ..LimitSettings::default()
            },
        )
        .await;
    for left in ["1", "0"] {
        let r = f.post(&key, &message("claude-sonnet-4-6")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            header(&r, "anthropic-ratelimit-requests-limit").as_deref(),
            Some("2")
        );
        assert_eq!(
            header(&r, "anthropic-ratelimit-requests-remaining").as_deref(),
            Some(left)
        );
        assert!(
            header(&r, "anthropic-ratelimit-requests-reset")
                .unwrap()
                .ends_with('Z')
        );
        // The simulator's own (the organisation's) figures never reach the client.
        assert!(header(&r, "anthropic-ratelimit-tokens-limit").is_none());
    }
    let r = f.post(&key, &message("claude-sonnet-4-6")).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "x-should-retry").as_deref(), Some("true"));
    assert_eq!(header(&r, "retry-after").as_deref(), Some("30"));
    assert_eq!(
        header(&r, "anthropic-ratelimit-requests-remaining").as_deref(),
        Some("0")
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("limit of 2 requests per minute"), "{msg}");
    // A key without limits next to it is untouched: the upstream's headers pass through.
    let free = f.key("t", LimitSettings::default()).await;
    let r = f.post(&free, &message("claude-sonnet-4-6")).await;
    assert_eq!(r.status(), 200);
    assert_ne!(
        header(&r, "anthropic-ratelimit-requests-limit").as_deref(),
        Some("2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_rpm_gets_429_with_retry_after_and_ratelimit_headers() {
    rpm_limit_then_429(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_rpm_gets_429_on_redis_too() {
    rpm_limit_then_429(true).await;
}

async fn tokens_settle(redis: bool) {
    let Some(f) = fixture(redis).await else {
        return;
    };
    let key = f
        .key(
            "t",
            LimitSettings {
                itpm: Some(10_000),
                otpm: Some(1_000),
                ..LimitSettings::default()
            },
        )
        .await;
    let body = serde_json::json!({
        "model": "claude-sonnet-4-6",
        "max_tokens": 500,
        "messages": [{"role": "user", "content": "echo: one two three"}]
    });
    let input = rampart_api::tokens::estimate_input_tokens(&body);
    let r = f.post(&key, &body).await;
    assert_eq!(r.status(), 200);
    // At admission: the estimate and all of max_tokens are reserved.
    let remaining = |r: &reqwest::Response, d: &str| {
        header(r, &format!("anthropic-ratelimit-{d}-remaining"))
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert_eq!(remaining(&r, "input-tokens"), 10_000 - input);
    assert_eq!(remaining(&r, "output-tokens"), 500);
    assert_eq!(remaining(&r, "tokens"), 500);
    let reply: serde_json::Value = r.json().await.unwrap();
    let used_out = reply["usage"]["output_tokens"].as_u64().unwrap();
    assert!(used_out < 500);
    // Settled with the real usage before the response ended: the next admission sees the
    // refund (plus a little refill).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = f.post(&key, &body).await;
    assert_eq!(r.status(), 200);
    let out = remaining(&r, "output-tokens");
    assert!(
        (1_000 - used_out - 500..=1_000 - used_out - 500 + 10).contains(&out),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_reserved_at_admission_and_settled_with_real_usage() {
    tokens_settle(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_settled_on_redis_too() {
    tokens_settle(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_settle_with_the_usage_of_their_events() {
    let f = fixture(false).await.unwrap();
    let key = f.otpm_key().await;
    let mut body = message("claude-sonnet-4-6");
    body["stream"] = serde_json::json!(true);
    body["max_tokens"] = serde_json::json!(400);
    let r = f.post(&key, &body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "anthropic-ratelimit-output-tokens-remaining").as_deref(),
        Some("600")
    );
    let text = r.text().await.unwrap();
    assert!(text.contains("message_stop"));
    let r = f.post(&key, &message("claude-sonnet-4-6")).await;
    let left: u64 = header(&r, "anthropic-ratelimit-output-tokens-remaining")
        .unwrap()
        .parse()
        .unwrap();
    // 400 reserved, a handful used: almost all of it came back (16 more reserved now).
    assert!(left > 1_000 - 16 - 20, "{left}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequential_client_never_trips_its_concurrency_limit() {
    let f = fixture(false).await.unwrap();
    let key = f.slot_key().await;
    for _ in 0..20 {
        let r = f.post(&key, &message("claude-haiku-4-5")).await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    let mut stream = message("claude-haiku-4-5");
    stream["stream"] = serde_json::json!(true);
    for _ in 0..5 {
        let r = f.post(&key, &stream).await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_budget_is_402_naming_the_budget_and_its_reset() {
    let f = fixture(false).await.unwrap();
    let key = f.key("t", one_micro_a_day()).await;
    assert_eq!(
        f.post(&key, &message("claude-sonnet-4-6")).await.status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = f.post(&key, &message("claude-sonnet-4-6")).await;
    assert_eq!(r.status(), 402);
    assert_eq!(header(&r, "x-should-retry").as_deref(), Some("false"));
    assert!(header(&r, "retry-after").is_none());
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "billing_error");
    let msg = body["error"]["message"].as_str().unwrap();
    let tomorrow = (time::OffsetDateTime::now_utc().date() + time::Duration::days(1)).to_string();
    assert!(
        msg.contains("daily budget of $0.000001")
            && msg.contains(&format!("resets at {tomorrow}T00:00:00Z")),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_limits_are_shared_and_team_defaults_apply_to_keys() {
    let f = fixture(false).await.unwrap();
    let team = f.db.team("shared").await;
    f.db.limits()
        .set_team_limits(
            team.id,
            &TeamLimitSettings {
                team: LimitSettings {
                    rpm: Some(3),
                    ..LimitSettings::default()
                },
                key_defaults: LimitSettings {
                    rpm: Some(2),
                    ..LimitSettings::default()
                },
            },
            None,
        )
        .await
        .unwrap();
    let a = f.key("shared", LimitSettings::default()).await;
    let b = f.key("shared", LimitSettings::default()).await;
    assert_eq!(f.post(&a, &message("claude-haiku-4-5")).await.status(), 200);
    assert_eq!(f.post(&a, &message("claude-haiku-4-5")).await.status(), 200);
    // The key default (2) stops key a; the team's 3 leaves one for key b.
    assert_eq!(f.post(&a, &message("claude-haiku-4-5")).await.status(), 429);
    assert_eq!(f.post(&b, &message("claude-haiku-4-5")).await.status(), 200);
    let r = f.post(&b, &message("claude-haiku-4-5")).await;
    assert_eq!(r.status(), 429);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("team's limit of 3")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_dies_midway_settles_with_what_it_reported() {
    let f = fixture(false).await.unwrap();
    // The simulator cuts the stream after three events (message_start among them).
    let (key, text) = f.cut_stream(3, None).await;
    // Rampart ends a stream the upstream cut with a well-formed error event.
    assert!(
        text.contains("message_start") && !text.contains("message_stop"),
        "{text}"
    );
    // Settled with message_start's usage (one output token), not the 400 reserved.
    let left = f.output_left(&key).await;
    assert!((1_000 - 1 - 16..=1_000 - 16).contains(&left), "{left}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_after_text_deltas_settles_the_text_it_delivered() {
    let f = fixture(false).await.unwrap();
    // Sixty words of three letters, cut after message_start, content_block_start, ping and nine
    // text deltas of three words: 27 words, 107 characters.
    let start = tokio::time::Instant::now();
    let (key, text) = f
        .cut_stream(12, Some("echo: ".to_owned() + &["abc"; 60].join(" ")))
        .await;
    assert_eq!(
        text.matches("event: content_block_delta").count(),
        9,
        "{text}"
    );
    // Settled with ceil(107 / 4) = 27 output tokens (it was one a delta, 9), not the 400
    // reserved; the next request reserves its 16.
    let left = f.output_left(&key).await;
    let refilled = start.elapsed().as_millis() as u64 * 1_000 / 60_000 + 1;
    assert!(
        (1_000 - 27 - 16..=1_000 - 27 - 16 + refilled).contains(&left),
        "{left} {refilled}"
    );
}

async fn unread_answers_keep_their_reservation(redis: bool) {
    let Some(f) = fixture(redis).await else {
        return;
    };
    let fault = |kind: serde_json::Value| f._sim.fault(kind);
    let mut body = message("claude-sonnet-4-6");
    body["max_tokens"] = serde_json::json!(400);
    let otpm = LimitSettings {
        otpm: Some(1_000),
        ..LimitSettings::default()
    };
    // A whole answer cut off halfway through its body, and a request whose every attempt lost
    // its connection after it was sent: the upstream may have billed either in full, and their
    // usage is unknown, so the 400 output tokens reserved stay drawn.
    for (kind, status) in [
        (serde_json::json!({"kind": "abort_stream"}), 200),
        (serde_json::json!({"kind": "reset", "count": 3}), 502),
    ] {
        let key = f.key("t", otpm).await;
        fault(kind).await;
        let start = tokio::time::Instant::now();
        let r = f.post(&key, &body).await;
        assert_eq!(r.status(), status);
        let _ = r.bytes().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = f.post(&key, &message("claude-sonnet-4-6")).await;
        let left: u64 = header(&r, "anthropic-ratelimit-output-tokens-remaining")
            .unwrap()
            .parse()
            .unwrap();
        // What refilled meanwhile (1,000 a minute; the retries wait their backoff) comes back.
        let refilled = start.elapsed().as_millis() as u64 * 1_000 / 60_000 + 1;
        assert!(
            (1_000 - 400 - 16..=1_000 - 400 - 16 + refilled).contains(&left),
            "{left} {refilled}"
        );
    }
    // And the budget is charged for it: 400 Sonnet output tokens ($15/MTok) are 6,000
    // micro-dollars, past this budget, which a cut answer charged nothing used to leave open.
    let key = f
        .key(
            "t",
            LimitSettings {
                budget: Some(BudgetSetting {
                    micros: 5_000,
                    period: BudgetPeriod::Day,
                }),
                ..LimitSettings::default()
            },
        )
        .await;
    fault(serde_json::json!({"kind": "abort_stream"})).await;
    let r = f.post(&key, &body).await;
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.is_err());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = f.post(&key, &message("claude-sonnet-4-6")).await;
    assert_eq!(r.status(), 402);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_whose_usage_is_unread_keeps_its_reservation() {
    unread_answers_keep_their_reservation(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_whose_usage_is_unread_keeps_its_reservation_on_redis_too() {
    unread_answers_keep_their_reservation(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admitted_request_that_fails_upstream_gives_its_reservation_back() {
    let f = fixture(false).await.unwrap();
    let key = f.otpm_key().await;
    f._sim
        .fault(serde_json::json!({"kind": "status", "status": 400, "count": 1}))
        .await;
    let mut body = message("claude-sonnet-4-6");
    body["max_tokens"] = serde_json::json!(500);
    let r = f.post(&key, &body).await;
    assert_eq!(r.status(), 400);
    // Even the upstream's error carries Rampart's limits, as at admission.
    assert_eq!(
        header(&r, "anthropic-ratelimit-output-tokens-remaining").as_deref(),
        Some("500")
    );
    r.bytes().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = f.post(&key, &message("claude-sonnet-4-6")).await;
    assert_eq!(
        header(&r, "anthropic-ratelimit-output-tokens-remaining").as_deref(),
        Some("984")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_budget_also_stops_new_batches() {
    let f = fixture(false).await.unwrap();
    let key = f
        .key(
            "t",
            LimitSettings {
                rpm: Some(1_000),
                budget: Some(BudgetSetting {
                    micros: 1,
                    period: BudgetPeriod::Month,
                }),
                ..LimitSettings::default()
            },
        )
        .await;
    let batch = serde_json::json!({"requests": [{"custom_id": "a", "params": message("claude-haiku-4-5")}]});
    let r = f.gw.send("/v1/messages/batches", &key, &batch).await;
    assert_eq!(r.status(), 200, "budget left: the batch starts");
    assert_eq!(
        f.post(&key, &message("claude-haiku-4-5")).await.status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = f.gw.send("/v1/messages/batches", &key, &batch).await;
    assert_eq!(r.status(), 402);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "billing_error");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("this API key's monthly budget of $0.000001 is spent; it resets at "),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_tokens_counts_as_a_request_against_the_rpm_but_draws_no_tokens_or_budget() {
    let f = fixture(false).await.unwrap();
    let key = f
        .key(
            "t",
            LimitSettings {
                rpm: Some(3),
                itpm: Some(1),
                budget: Some(BudgetSetting {
                    micros: 1,
                    period: BudgetPeriod::Month,
                }),
                ..LimitSettings::default()
            },
        )
        .await;
    let count = |model: &str| serde_json::json!({"model": model, "messages": [{"role": "user", "content": "How many tokens is this?"}]});
    // An input-token limit of 1 and a budget of one micro-dollar do not stop count_tokens.
    for left in ["2", "1"] {
        let r =
            f.gw.send(
                "/v1/messages/count_tokens",
                &key,
                &count("claude-sonnet-4-6"),
            )
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            header(&r, "anthropic-ratelimit-requests-remaining").as_deref(),
            Some(left)
        );
    }
    // The Messages request that follows draws on the same request limit: the third of three.
    let r = f.post(&key, &message("claude-haiku-4-5")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "anthropic-ratelimit-requests-remaining").as_deref(),
        Some("0")
    );
    let r =
        f.gw.send(
            "/v1/messages/count_tokens",
            &key,
            &count("claude-sonnet-4-6"),
        )
        .await;
    assert_eq!(r.status(), 429);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("limit of 3 requests per minute"), "{msg}");
}

/// An `anthropic-ratelimit-*-reset` header as milliseconds since the epoch.
fn reset_ms(r: &reqwest::Response, dimension: &str) -> i128 {
    let v = header(r, &format!("anthropic-ratelimit-{dimension}-reset")).unwrap();
    let t = time::OffsetDateTime::parse(&v, &time::format_description::well_known::Rfc3339);
    t.unwrap().unix_timestamp_nanos() / 1_000_000
}

fn now_ms() -> i128 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000
}

async fn large_prompts_wait(redis: bool) {
    let Some(f) = fixture(redis).await else {
        return;
    };
    let itpm = LimitSettings {
        itpm: Some(1_000),
        ..LimitSettings::default()
    };
    let key = f.key("t", itpm).await;
    let mut body = message("claude-sonnet-4-6");
    body["messages"][0]["content"] = serde_json::json!(format!("echo: {}", "abcd ".repeat(720)));
    let input = rampart_api::tokens::estimate_input_tokens(&body);
    assert!((800..1_000).contains(&input), "{input}");
    let input = i128::from(input);
    // The prompt's tokens come back only as the bucket refills (1 000 a minute: 60 ms each), and
    // the reset says so: not a second ahead because the reservation is still in flight.
    let before = now_ms();
    let r = f.post(&key, &body).await;
    assert_eq!(r.status(), 200);
    let remaining = header(&r, "anthropic-ratelimit-input-tokens-remaining");
    assert_eq!(remaining, Some((1_000 - input).to_string()));
    let wait = reset_ms(&r, "input-tokens") - before;
    assert!(
        (input * 60 - 1_000..=input * 60 + 2_000).contains(&wait),
        "{wait}"
    );
    assert_eq!(reset_ms(&r, "tokens"), reset_ms(&r, "input-tokens"));
    // A second one overdraws the bucket; the third waits until one token is back.
    let r = f.post(&key, &body).await;
    assert_eq!(r.status(), 200);
    let r = f.post(&key, &body).await;
    assert_eq!(r.status(), 429);
    let retry: i128 = header(&r, "retry-after").unwrap().parse().unwrap();
    let debt = 2 * input - 1_000;
    assert!(
        ((debt + 1) * 60 / 1_000 - 2..=(debt + 1) * 60 / 1_000 + 1).contains(&retry),
        "retry-after {retry} for {debt} tokens of debt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_prompt_is_waited_out_in_full_by_its_reset_and_the_next_retry_after() {
    large_prompts_wait(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_prompt_is_waited_out_in_full_on_redis_too() {
    large_prompts_wait(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_of_a_slow_answer_show_the_limits_as_they_stand_when_it_goes_out() {
    let f = fixture(false).await.unwrap();
    let rpm = LimitSettings {
        rpm: Some(60),
        ..LimitSettings::default()
    };
    let key = f.key("t", rpm).await;
    // At admission one request of 60 is used (back in a second); the answer comes 2.5 s later.
    f._sim
        .fault(serde_json::json!({"kind": "stall_headers", "count": 1, "delay_ms": 2_500}))
        .await;
    let before = now_ms();
    let r = f.post(&key, &message("claude-sonnet-4-6")).await;
    assert_eq!(r.status(), 200);
    // By then it is back, and the reset is not in the past.
    assert_eq!(
        header(&r, "anthropic-ratelimit-requests-remaining").as_deref(),
        Some("60")
    );
    let reset = reset_ms(&r, "requests");
    assert!(
        reset >= before + 2_500,
        "reset {} ms after the request",
        reset - before
    );
    // A prompt answer shows the values read at admission.
    let r = f.post(&key, &message("claude-sonnet-4-6")).await;
    assert_eq!(
        header(&r, "anthropic-ratelimit-requests-remaining").as_deref(),
        Some("59")
    );
}

/// A rolling deploy on Redis: a stream still open when the shutdown grace ends is cut, and its
/// concurrency slot is given back before the instance exits, not held for the lease: another
/// instance admits the key at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_at_the_shutdown_deadline_frees_its_slot_on_redis() {
    let prefix = format!("gw-{}", uuid::Uuid::new_v4().simple());
    let Some(limiter) = redis_limiter(&prefix) else {
        return;
    };
    let f = fixture_with(limiter, Duration::from_millis(300))
        .await
        .unwrap();
    let key = f.slot_key().await;
    f._sim
        .fault(serde_json::json!({"kind": "stall_stream", "after_events": 2, "delay_ms": 30_000}))
        .await;
    let mut body = message("claude-sonnet-4-6");
    body["stream"] = serde_json::json!(true);
    let mut r = f.post(&key, &body).await;
    assert_eq!(r.status(), 200);
    assert!(r.chunk().await.unwrap().is_some());
    assert_eq!(
        f.post(&key, &message("claude-sonnet-4-6")).await.status(),
        429
    );
    let Fixture {
        db: _db,
        gw,
        dir,
        _sim: upstream,
    } = f;
    gw.stop().await;
    drop(r);
    // Another instance on the same Redis.
    let limiter = redis_limiter(&prefix).unwrap();
    let next = serve(gateway(
        limiter,
        &upstream.url,
        &dir,
        Duration::from_secs(5),
    ))
    .await;
    let r = next
        .send("/v1/messages", &key, &message("claude-sonnet-4-6"))
        .await;
    assert_eq!(r.status(), 200);
}

/// A gateway as `rampart serve` starts one: keys from the store, a usage ledger, and limits
/// from [`Limits::start`] (budgets started from the ledger's spend, and kept so).
struct Served {
    gw: TestGateway,
    dir: Arc<KeyDirectory>,
    limiter: Limiter,
    plane: rampart_gateway::store_plane::StorePlane,
    limits_task: tokio::task::JoinHandle<()>,
    _spool: tempfile::TempDir,
}

impl Served {
    async fn start(db: &TestStore, upstream: &str, config: &LimiterConfig) -> Served {
        let dir = Arc::new(KeyDirectory::new(hasher()));
        let spool = tempfile::tempdir().unwrap();
        let (plane, mut parts) = crate::ledger::ledger_plane(db, &dir, spool.path()).await;
        let s = settings(upstream, Some("sk-ant-up"));
        let (limits, limits_task) = Limits::start(config, s.prices.clone(), &dir, &db.store())
            .await
            .unwrap();
        let limiter = limits.limiter.clone();
        parts.limits = Some(limits);
        let gw = serve(Gateway::with_parts(s, dir.clone(), parts).unwrap()).await;
        Served {
            gw,
            dir,
            limiter,
            plane,
            limits_task,
            _spool: spool,
        }
    }

    /// A key with [`one_micro_a_day`], spent.
    async fn spent_key(&self, db: &TestStore) -> String {
        let (key, _) = crate::ledger::limited_key(db, &self.dir, one_micro_a_day()).await;
        assert_eq!(self.status(&key).await, 200);
        assert_eq!(self.status(&key).await, 402);
        key
    }

    async fn status(&self, key: &str) -> u16 {
        let r = self
            .gw
            .send("/v1/messages", key, &message("claude-haiku-4-5"))
            .await;
        r.status().as_u16()
    }

    /// After long enough for a health check to find Redis's state lost and the budgets to be
    /// seeded again, the spent budget of `key` still refuses it; then stop.
    async fn still_refuses(self, key: &str) {
        tokio::time::sleep(RESEEDED).await;
        assert_eq!(
            self.status(key).await,
            402,
            "the budget was handed out again"
        );
        self.stop().await;
    }

    /// Stop it; the ledger is drained into the store.
    async fn stop(self) {
        self.gw.stop().await;
        self.limits_task.abort();
        self.plane.stop().await;
    }
}

/// Delete every key under `prefix` on the Redis at `url`: its state lost, as by a restart
/// without persistence or `FLUSHALL`, for this prefix alone (other tests share the Redis).
async fn wipe(url: &str, prefix: &str) {
    let mut conn = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: i64 = redis::Script::new(
        "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end return 1",
    )
    .arg(format!("{prefix}:*"))
    .invoke_async(&mut conn)
    .await
    .unwrap();
}

/// Wait (at most 10 s) until `check` holds.
async fn within_10s<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited 10 s for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Longer than a health check (every second) and a seeding of a few budgets.
const RESEEDED: Duration = Duration::from_secs(3);

/// A running gateway whose Redis loses its state finds out by its next health check and starts
/// every budget from the usage ledger's spend again: a spent budget stays spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_its_state_does_not_hand_a_spent_budget_out_again() {
    let Some(url) = test_redis_url() else { return };
    let prefix = fresh_prefix();
    let db = TestStore::new().await;
    let upstream = sim(Some("sk-ant-up")).await;
    let served = Served::start(&db, &upstream.url, &redis_config(url.clone(), &prefix)).await;
    let key = served.spent_key(&db).await;
    within_10s("the ledger to flush", || async {
        crate::ledger::total(&db).await.cost_micro_usd > 0
    })
    .await;
    wipe(&url, &prefix).await;
    served.still_refuses(&key).await;
}

/// A TCP stand-in for the Redis at `to` (`host:port`): closes every connection until opened,
/// then forwards them.
struct Gate {
    url: String,
    open: Arc<std::sync::atomic::AtomicBool>,
}

impl Gate {
    async fn closed(to: String) -> Gate {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let is_open = open.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !is_open.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let to = to.clone();
                tokio::spawn(async move {
                    let mut server = tokio::net::TcpStream::connect(to).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        Gate { url, open }
    }

    fn open(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// An instance that starts while Redis is unreachable cannot start its budgets from the usage
/// ledger; it does so once Redis answers, so a budget spent before (here on another instance)
/// is not handed out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_started_while_redis_was_unreachable_seeds_its_budgets_once_it_answers() {
    let Some(url) = test_redis_url() else { return };
    let db = TestStore::new().await;
    let upstream = sim(Some("sk-ant-up")).await;
    let first = Served::start(&db, &upstream.url, &LimiterConfig::default()).await;
    let key = first.spent_key(&db).await;
    first.stop().await;

    let to = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection_info()
        .addr()
        .to_string();
    let gate = Gate::closed(to).await;
    let served = Served::start(
        &db,
        &upstream.url,
        &redis_config(gate.url.clone(), &fresh_prefix()),
    )
    .await;
    assert_eq!(served.status(&key).await, 503, "fails closed");
    gate.open();
    within_10s("Redis to answer", || async { served.limiter.is_up() }).await;
    served.still_refuses(&key).await;
}
