//! Resilience against real simulators: every failure class through the real gateway, with the
//! upstream calls counted by the simulator; streams held back, failed mid-way and idle; breakers
//! opening, shedding, probing and closing; one of two simulators killed under load; a stored
//! credential per target.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rampart_crypto::Secret;
use rampart_gateway::Gateway;
use serde_json::{Value, json};

use crate::harness::{TestGateway, serve};

const CLIENT_KEY: &str = "rk_test_resilience_0123456789";

/// A simulator on a runtime of its own, so it can be killed: every socket closes at once.
struct Sim {
    url: String,
    http: reqwest::Client,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Sim {
    fn start(api_key: Option<&str>) -> Sim {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let cfg = rampart_sim::SimConfig {
            api_key: api_key.map(str::to_owned),
            ..rampart_sim::SimConfig::default()
        };
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            rampart_sim::serve(listener, cfg, std::future::pending()).await
        });
        Sim {
            url,
            http: reqwest::Client::new(),
            runtime: Some(runtime),
        }
    }

    /// Stop answering: the listener and every connection close.
    fn kill(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }

    async fn fault(&self, spec: Value) {
        let r = self
            .http
            .post(format!("{}/_sim/faults", self.url))
            .json(&spec)
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "{spec}: {}",
            r.text().await.unwrap()
        );
    }

    async fn reset(&self) {
        self.http
            .post(format!("{}/_sim/reset", self.url))
            .send()
            .await
            .unwrap();
    }

    /// Messages requests (and count_tokens) that reached the simulator.
    async fn calls(&self) -> u64 {
        crate::harness::messages_served(&self.http, &self.url).await
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Retries fast enough for tests; `extra` is appended to the configuration.
fn settings(upstream: &str, extra: &str) -> rampart_gateway::Settings {
    rampart_gateway::config::load(&rampart_gateway::Sources {
        inline_toml: Some(format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace_secs = 5\n\
             [upstream]\nbase_url = \"{upstream}\"\n\
             [upstream.retry]\ninitial_backoff_ms = 20\nmax_backoff_ms = 100\n{extra}"
        )),
        upstream_api_key: Some(Secret::new("sk-ant-test-upstream".to_owned())),
        client_keys: vec![Secret::new(CLIENT_KEY.to_owned())],
        ..rampart_gateway::Sources::default()
    })
    .unwrap()
}

async fn gateway(settings: rampart_gateway::Settings) -> TestGateway {
    let auth = Arc::new(settings.keys.clone());
    serve(Gateway::new(settings, auth).unwrap()).await
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn ask(gw: &TestGateway, body: &Value) -> Answer {
    let r = gw
        .http
        .post(format!("{}/v1/messages", gw.url))
        .header("x-api-key", CLIENT_KEY)
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    Answer {
        status,
        headers,
        body: r.text().await.unwrap_or_default(),
    }
}

fn message(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "max_tokens": 64,
        "stream": stream,
        "messages": [{"role": "user", "content": "echo: resilient"}]
    })
}

const SONNET: &str = "claude-sonnet-4-6";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failure_class_ends_as_documented_with_the_upstream_calls_counted() {
    struct Case {
        faults: Value,
        status: u16,
        calls: u64,
        error_type: Option<&'static str>,
    }
    let cases = [
        // Two 529s then success: three upstream calls, one answer.
        Case {
            faults: json!({"kind": "status", "status": 529, "count": 2, "retry_after": 0}),
            status: 200,
            calls: 3,
            error_type: None,
        },
        // A 400 is one call, passed through.
        Case {
            faults: json!({"kind": "status", "status": 400, "message": "max_tokens: bad"}),
            status: 400,
            calls: 1,
            error_type: Some("invalid_request_error"),
        },
        // 500s every time: three calls, then the upstream's own error.
        Case {
            faults: json!({"kind": "status", "status": 500, "count": 9}),
            status: 500,
            calls: 3,
            error_type: Some("api_error"),
        },
        // A 429 with retry-after-ms is waited out on the (only) target, then succeeds.
        Case {
            faults: json!({"kind": "status", "status": 429, "retry_after": 0, "retry_after_ms": 150}),
            status: 200,
            calls: 2,
            error_type: None,
        },
        // A 503 and a 504 are server errors like any other.
        Case {
            faults: json!({"kind": "status", "status": 503, "retry_after": 0}),
            status: 200,
            calls: 2,
            error_type: None,
        },
        // A dropped connection is retried...
        Case {
            faults: json!({"kind": "reset"}),
            status: 200,
            calls: 2,
            error_type: None,
        },
        // ...and after the last attempt is Rampart's 502.
        Case {
            faults: json!({"kind": "reset", "count": 9}),
            status: 502,
            calls: 3,
            error_type: Some("api_error"),
        },
        // No headers within the first-byte timeout (300 ms here): retried.
        Case {
            faults: json!({"kind": "stall_headers", "delay_ms": 2000}),
            status: 200,
            calls: 2,
            error_type: None,
        },
        Case {
            faults: json!({"kind": "stall_headers", "delay_ms": 2000, "count": 9}),
            status: 504,
            calls: 3,
            error_type: Some("timeout_error"),
        },
    ];
    let sim = Sim::start(None);
    for (i, case) in cases.iter().enumerate() {
        // A fresh gateway per case: no breaker state carries over.
        let gw = gateway(settings(
            &sim.url,
            "[upstream.timeouts.messages]\nheader_timeout_ms = 300\n",
        ))
        .await;
        sim.reset().await;
        sim.fault(case.faults.clone()).await;
        let a = ask(&gw, &message(SONNET, false)).await;
        assert_eq!(
            (a.status, sim.calls().await),
            (case.status, case.calls),
            "case {i}: {}",
            case.faults
        );
        if a.status != 502 && a.status != 504 {
            // An upstream answer says how many attempts it took, when more than one.
            let attempts = case.calls.to_string();
            let expected = (case.calls > 1).then_some(attempts.as_str());
            assert_eq!(a.header("x-rampart-attempts"), expected);
        }
        match case.error_type {
            None => {
                let body: Value = serde_json::from_str(&a.body).unwrap();
                assert_eq!(body["content"][0]["text"], "resilient", "case {i}");
                assert_eq!(a.header("x-should-retry"), None);
            }
            Some(t) => {
                let body: Value = serde_json::from_str(&a.body).unwrap();
                assert_eq!(body["error"]["type"], t, "case {i}: {}", a.body);
                assert_eq!(a.header("x-should-retry"), Some("false"), "case {i}");
            }
        }
        gw.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_is_502_and_a_connect_timeout_504() {
    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let gw = gateway(settings(&closed, "")).await;
    let a = ask(&gw, &message(SONNET, false)).await;
    assert_eq!(a.status, 502);
    assert!(a.body.contains("upstream unreachable"), "{}", a.body);
    assert_eq!(a.header("x-should-retry"), Some("false"));
    gw.stop().await;
    // A listener whose accept queue is full and never drained: new connections hang in SYN.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let full = socket.listen(1).unwrap();
    let addr = full.local_addr().unwrap();
    let mut fillers = Vec::new();
    while let Ok(Ok(c)) = tokio::time::timeout(
        Duration::from_millis(200),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    {
        fillers.push(c);
        assert!(fillers.len() < 64, "the accept queue never filled");
    }
    let gw = gateway(settings(
        &format!("http://{addr}"),
        "[upstream.timeouts.messages]\nconnect_timeout_ms = 100\n",
    ))
    .await;
    let a = ask(&gw, &message(SONNET, false)).await;
    let body: Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(a.status, 504, "{}", a.body);
    assert_eq!(
        body["error"]["message"],
        "upstream connect timeout: no connection to the Anthropic API within 100 ms"
    );
    assert_eq!(a.header("x-should-retry"), Some("false"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_first_event_is_an_in_band_overloaded_error_is_retried_transparently() {
    let sim = Sim::start(None);
    let gw = gateway(settings(&sim.url, "")).await;
    sim.fault(json!({"kind": "error_event", "after_events": 0}))
        .await;
    let a = ask(&gw, &message(SONNET, true)).await;
    assert_eq!((a.status, sim.calls().await), (200, 2));
    assert!(a.body.starts_with("event: message_start"), "{}", a.body);
    assert!(a.body.contains("resilient") && a.body.contains("event: message_stop"));
    assert!(!a.body.contains("overloaded_error"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_fails_after_bytes_were_sent_ends_with_a_well_formed_error_event() {
    let sim = Sim::start(None);
    let gw = gateway(settings(&sim.url, "")).await;
    // The connection breaks after three events: Rampart closes the stream with its own event.
    sim.fault(json!({"kind": "abort_stream", "after_events": 3}))
        .await;
    let a = ask(&gw, &message(SONNET, true)).await;
    assert_eq!(
        (a.status, sim.calls().await),
        (200, 1),
        "no retry once bytes were sent"
    );
    let events = sse_events(&a.body);
    assert_eq!(events.first().map(|e| e.0.as_str()), Some("message_start"));
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(
        data,
        &json!({"type": "error", "error": {"type": "api_error", "message": "upstream connection lost mid-stream"}})
    );
    // The upstream's own in-band error after bytes were sent passes through as it is.
    sim.reset().await;
    sim.fault(json!({"kind": "error_event", "after_events": 3}))
        .await;
    let a = ask(&gw, &message(SONNET, true)).await;
    assert_eq!(sim.calls().await, 1);
    let events = sse_events(&a.body);
    assert_eq!(
        events.last().unwrap().1["error"]["type"],
        "overloaded_error"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_idle_longer_than_the_idle_timeout_ends_with_a_timeout_error_event() {
    let sim = Sim::start(None);
    let gw = gateway(settings(
        &sim.url,
        "[upstream.timeouts.messages]\nidle_timeout_ms = 300\n",
    ))
    .await;
    sim.fault(json!({"kind": "stall_stream", "after_events": 2, "delay_ms": 3000}))
        .await;
    let started = tokio::time::Instant::now();
    let a = ask(&gw, &message(SONNET, true)).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let (name, data) = sse_events(&a.body).pop().unwrap();
    assert_eq!(name, "error");
    assert_eq!(data["error"]["type"], "timeout_error");
    assert_eq!(
        data["error"]["message"],
        "upstream idle timeout: the Anthropic API sent nothing for 300 ms"
    );
    assert_eq!(sim.calls().await, 1);
    gw.stop().await;
}

/// `(event name, data)` of every event of an SSE body.
fn sse_events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = String::new();
            let mut data = Value::Null;
            for line in e.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(v).unwrap();
                }
            }
            (name, data)
        })
        .collect()
}

fn two_targets(a: &Sim, b: &Sim, names: (&str, &str), extra: &str) -> rampart_gateway::Settings {
    settings(
        &a.url,
        &format!(
            "[[upstream.targets]]\nname = \"{}\"\nbase_url = \"{}\"\n\
             [[upstream.targets]]\nname = \"{}\"\nbase_url = \"{}\"\n{extra}",
            names.0, a.url, names.1, b.url
        ),
    )
}

/// The breaker state of `target` in `/metrics` (0 closed, 1 open, 2 half-open).
async fn breaker_state(gw: &TestGateway, target: &str) -> Option<u8> {
    let text = gw
        .http
        .get(format!("{}/metrics", gw.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("rampart_upstream_breaker_state{{target=\"{target}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_target_opens_its_breaker_sheds_to_the_other_then_probes_and_closes() {
    let (a, b) = (Sim::start(None), Sim::start(None));
    let gw = gateway(two_targets(
        &a,
        &b,
        ("shed-a", "shed-b"),
        "[upstream.breaker]\nconsecutive_failures = 3\nopen_ms = 400\n",
    ))
    .await;
    a.fault(json!({"kind": "status", "status": 500, "count": 1000}))
        .await;
    // Power of two choices decides how soon `a` is picked, so drive traffic until its breaker
    // opens (every client request still succeeds: a failure is retried on `b`).
    let mut sent = 0;
    while breaker_state(&gw, "shed-a").await != Some(1) {
        assert!(sent < 200, "the breaker of the failing target never opened");
        assert_eq!(ask(&gw, &message(SONNET, false)).await.status, 200);
        sent += 1;
    }
    assert_eq!(a.calls().await, 3, "three failures open the breaker");
    for _ in 0..30 {
        assert_eq!(ask(&gw, &message(SONNET, false)).await.status, 200);
    }
    assert_eq!(a.calls().await, 3, "no traffic reaches an open breaker");
    assert_eq!(breaker_state(&gw, "shed-a").await, Some(1));
    // `a` recovers; after the open period the first request picked for it is the one probe,
    // and its success closes the breaker.
    a.reset().await;
    tokio::time::sleep(Duration::from_millis(450)).await;
    let mut sent = 0;
    while a.calls().await == 0 {
        assert!(sent < 200, "no probe reached the recovered target");
        assert_eq!(ask(&gw, &message(SONNET, false)).await.status, 200);
        sent += 1;
    }
    assert_eq!(
        a.calls().await,
        1,
        "half-open lets exactly one probe through"
    );
    assert_eq!(breaker_state(&gw, "shed-a").await, Some(0));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_simulators_under_load_costs_no_client_errors() {
    let (a, mut b) = (Sim::start(None), Sim::start(None));
    let gw = Arc::new(
        gateway(two_targets(
            &a,
            &b,
            ("drill-a", "drill-b"),
            "[upstream.breaker]\nconsecutive_failures = 5\nopen_ms = 60000\n",
        ))
        .await,
    );
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (gw, ok, failed, stop) = (gw.clone(), ok.clone(), failed.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let a = ask(&gw, &message(SONNET, false)).await;
                    let counter = if a.status == 200 && a.body.contains("resilient") {
                        &ok
                    } else {
                        &failed
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before_kill = b.calls().await;
    assert!(before_kill > 0, "both targets served before the kill");
    b.kill();
    // Wait for the breaker to open, then count only what follows.
    let mut opened = false;
    for _ in 0..100 {
        if breaker_state(&gw, "drill-b").await == Some(1) {
            opened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(opened, "the dead target's breaker opened");
    let failed_before_open = failed.load(Ordering::Relaxed);
    let ok_at_open = ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let after_open = ok.load(Ordering::Relaxed) - ok_at_open;
    assert!(after_open > 50, "load kept flowing: {after_open}");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        failed_before_open,
        "no client-visible error after the breaker opened"
    );
    // Before it opened, refused connections were retried on the live target; only a response
    // cut off in flight by the kill could have reached a client.
    eprintln!(
        "drill: {before_kill} answered by b before the kill, {failed_before_open} client errors before the breaker opened, {after_open} answers after"
    );
    if let Ok(gw) = Arc::try_unwrap(gw) {
        gw.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_and_auto_routing_are_visible_in_headers_and_the_model_field() {
    let sim = Sim::start(None);
    let gw = gateway(settings(
        &sim.url,
        "[routing.aliases]\nfast = \"claude-haiku-4-5\"\n\
         [routing.fallbacks]\n\"claude-opus-4-6\" = [\"claude-sonnet-4-6\"]\n\
         [routing.auto]\ntoken_count = \"upstream\"\nsonnet_input_tokens = 1000\nopus_input_tokens = 20000\n",
    ))
    .await;
    sim.fault(json!({"kind": "status", "status": 529, "model": "claude-opus-4-6", "count": 5}))
        .await;
    let a = ask(&gw, &message("claude-opus-4-6", false)).await;
    let body: Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(
        (a.status, body["model"].as_str()),
        (200, Some("claude-sonnet-4-6"))
    );
    assert_eq!(
        a.header("x-rampart-served-model"),
        Some("claude-sonnet-4-6")
    );
    assert_eq!(
        a.header("x-rampart-fallback"),
        Some("claude-opus-4-6 -> claude-sonnet-4-6; overloaded")
    );
    let a = ask(&gw, &message("fast", false)).await;
    let body: Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(body["model"], "claude-haiku-4-5-20251001");
    assert_eq!(
        a.header("x-rampart-route"),
        Some("fast -> claude-haiku-4-5; alias")
    );
    // auto: a big prompt, counted by the simulator's count_tokens, goes to Opus.
    sim.reset().await;
    let big = json!({
        "model": "auto", "max_tokens": 64,
        "messages": [{"role": "user", "content": format!("echo: {}", "word ".repeat(20_000))}]
    });
    let a = ask(&gw, &big).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let route = a.header("x-rampart-route").unwrap();
    assert!(
        route.starts_with("auto -> claude-opus-4-6; input_tokens ")
            && route.ends_with(">= 20000 (count_tokens)"),
        "{route}"
    );
    let c = crate::harness::sim_counters(&sim.http, &sim.url).await;
    assert_eq!(
        (
            c["routes"]["count_tokens"].as_u64(),
            c["routes"]["messages"].as_u64()
        ),
        (Some(1), Some(1))
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_target_may_use_its_own_stored_credential() {
    use rampart_crypto::envelope::MasterKeys;
    use rampart_gateway::keydir::KeyDirectory;
    use rampart_gateway::store_plane::{StorePlane, StorePlaneOptions};
    use rampart_gateway::upstream_key::{self, StoredUpstream};

    let db = crate::harness::TestStore::new().await;
    let spec = format!("mk1:{}", rampart_crypto::keyspec::generate().expose());
    let keys = Arc::new(MasterKeys::from_spec(&Secret::new(spec), "RAMPART_MASTER_KEY").unwrap());
    for (name, key) in [
        ("org-a", "sk-ant-org-a-000000"),
        ("org-b", "sk-ant-org-b-111111"),
    ] {
        let new = upstream_key::seal(&keys, name, &Secret::new(key.to_owned())).unwrap();
        db.create_upstream_credential(&new, None).await.unwrap();
    }
    // Each simulator accepts only its own organisation's key.
    let a = Sim::start(Some("sk-ant-org-a-000000"));
    let b = Sim::start(Some("sk-ant-org-b-111111"));
    let settings = rampart_gateway::config::load(&rampart_gateway::Sources {
        inline_toml: Some(format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\
             [[upstream.targets]]\nname = \"org-a\"\nbase_url = \"{}\"\ncredential = \"org-a\"\nmodels = [\"claude-haiku-*\"]\n\
             [[upstream.targets]]\nname = \"org-b\"\nbase_url = \"{}\"\ncredential = \"org-b\"\nmodels = [\"claude-sonnet-*\"]\n",
            a.url, b.url
        )),
        client_keys: vec![Secret::new(CLIENT_KEY.to_owned())],
        store_keys: true,
        store_credentials: true,
        ..rampart_gateway::Sources::default()
    })
    .unwrap();
    assert!(!settings.resilience.needs_default_key());
    let targets = settings
        .resilience
        .stored_credentials()
        .into_iter()
        .map(|n| StoredUpstream::new(keys.clone(), Some(n)))
        .collect();
    let directory = Arc::new(KeyDirectory::new(crate::harness::hasher()));
    let (plane, parts) = StorePlane::start_with_targets(
        db.store(),
        directory,
        None,
        targets,
        StorePlaneOptions::default(),
    )
    .await
    .unwrap();
    let auth = Arc::new(settings.keys.clone());
    let gw = serve(Gateway::with_parts(settings, auth, parts).unwrap()).await;
    assert_eq!(
        ask(&gw, &message("claude-haiku-4-5", false)).await.status,
        200
    );
    assert_eq!(ask(&gw, &message(SONNET, false)).await.status, 200);
    assert_eq!((a.calls().await, b.calls().await), (1, 1));
    gw.stop().await;
    plane.stop().await;
}
