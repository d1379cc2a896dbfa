//! The upstream call on paused time, against a scripted transport: every attempt is recorded
//! (target, model sent, when), so call counts, waits and routing are asserted exactly.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use futures_util::StreamExt as _;
use http_body_util::BodyExt as _;
use http_body_util::combinators::BoxBody;

use super::*;
use crate::classify::TransportFailure;
use crate::config::UpstreamTarget;
use crate::resilience_config::TargetSettings;
use crate::routing::Features;

/// One scripted answer.
enum Step {
    /// Status, extra headers, body.
    Status(u16, Vec<(&'static str, &'static str)>, &'static str),
    /// An event stream: chunks, each sent after its delay.
    Sse(Vec<(u64, String)>),
    /// The transport fails.
    Fail(TransportFailure),
    /// No answer, ever.
    Hang,
}

#[derive(Debug, Clone)]
struct Sent {
    target: String,
    path: String,
    model: Option<String>,
    at: Instant,
}

#[derive(Default)]
struct Script {
    steps: Mutex<HashMap<String, VecDeque<Step>>>,
    sent: Mutex<Vec<Sent>>,
}

impl Script {
    fn on(&self, target: &str, steps: Vec<Step>) {
        self.steps
            .lock()
            .unwrap()
            .entry(target.to_owned())
            .or_default()
            .extend(steps);
    }

    fn sent(&self) -> Vec<Sent> {
        self.sent.lock().unwrap().clone()
    }

    fn calls(&self) -> usize {
        self.sent.lock().unwrap().len()
    }
}

type TestBody = BoxBody<Bytes, BoxError>;

impl Transport for Arc<Script> {
    type Body = TestBody;

    fn send(
        &self,
        req: http::Request<Full<Bytes>>,
        _connect_timeout: Duration,
    ) -> impl Future<Output = Result<http::Response<TestBody>, TransportFailure>> + Send {
        let target = req
            .uri()
            .host()
            .unwrap_or_default()
            .trim_end_matches(".test")
            .to_owned();
        let path = req.uri().path().to_owned();
        let step = self
            .steps
            .lock()
            .unwrap()
            .get_mut(&target)
            .and_then(VecDeque::pop_front)
            .unwrap_or(Step::Status(200, vec![], r#"{"type":"message"}"#));
        let this = self.clone();
        async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let model = crate::peek::peek(&body).ok().and_then(|p| p.model);
            this.sent.lock().unwrap().push(Sent {
                target,
                path,
                model,
                at: Instant::now(),
            });
            match step {
                Step::Fail(f) => Err(f),
                Step::Hang => std::future::pending().await,
                Step::Status(code, headers, body) => {
                    let mut resp = http::Response::new(
                        Full::new(Bytes::from_static(body.as_bytes()))
                            .map_err(|e| match e {})
                            .boxed(),
                    );
                    *resp.status_mut() = StatusCode::from_u16(code).unwrap();
                    resp.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    for (k, v) in headers {
                        resp.headers_mut().insert(k, HeaderValue::from_static(v));
                    }
                    Ok(resp)
                }
                Step::Sse(chunks) => {
                    let stream =
                        futures_util::stream::iter(chunks).then(|(delay, chunk)| async move {
                            tokio::time::sleep(Duration::from_millis(delay)).await;
                            if chunk == "ABORT" {
                                Err::<Frame<Bytes>, BoxError>("aborted".into())
                            } else {
                                Ok(Frame::data(Bytes::from(chunk)))
                            }
                        });
                    let mut resp = http::Response::new(http_body_util::BodyExt::boxed(
                        http_body_util::StreamBody::new(stream),
                    ));
                    resp.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("text/event-stream; charset=utf-8"),
                    );
                    Ok(resp)
                }
            }
        }
    }
}

fn target(name: &str, models: &[&str]) -> TargetSettings {
    TargetSettings {
        name: name.to_owned(),
        base: UpstreamTarget {
            scheme: http::uri::Scheme::HTTP,
            authority: format!("{name}.test").parse().unwrap(),
            path_prefix: String::new(),
        },
        key: TargetKey::Default,
        weight: 1.0,
        models: models.iter().map(|m| (*m).to_owned()).collect(),
    }
}

fn resilience(targets: Vec<TargetSettings>) -> ResilienceSettings {
    let t = RouteTimeouts {
        connect: Duration::from_secs(5),
        first_byte: Duration::from_secs(60),
        idle: Duration::from_secs(30),
        total: None,
    };
    ResilienceSettings {
        targets,
        batch_target: 0,
        retry: RetrySettings::default(),
        breaker: crate::breaker::BreakerSettings {
            consecutive_failures: 3,
            open_for: Duration::from_secs(10),
            ..crate::breaker::BreakerSettings::default()
        },
        timeouts: [t; 4],
        max_cooldown: Duration::from_secs(60),
    }
}

fn gateway(
    script: &Arc<Script>,
    settings: ResilienceSettings,
    routing: RoutingSettings,
) -> Upstreams<Arc<Script>> {
    let key = Arc::new(UpstreamKey::fixed(&crate::secret::Secret::new("sk-test".into())).unwrap());
    Upstreams::with_transport(&settings, routing, script.clone(), Some(key), &[]).unwrap()
}

/// One target, `a`, no routing.
fn single(script: &Arc<Script>) -> Upstreams<Arc<Script>> {
    gateway(
        script,
        resilience(vec![target("a", &[])]),
        RoutingSettings::default(),
    )
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn send_with(
    up: &Upstreams<Arc<Script>>,
    route: Route,
    body: &str,
    extra: &[(&'static str, &str)],
    scopes: Option<&Scopes>,
) -> Result<Answer, Failed> {
    let peeked = crate::peek::peek(body.as_bytes()).unwrap();
    let mut headers = HeaderMap::new();
    for (k, v) in extra {
        headers.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    let call = Call {
        route,
        method: Method::POST,
        path_and_query: http::uri::PathAndQuery::from_static("/v1/messages"),
        headers,
        body: Bytes::from(body.to_owned()),
        model: peeked.model.as_deref(),
        model_span: peeked.model_span.clone(),
        max_tokens: peeked.max_tokens,
        scopes,
        request_id: "req_test",
        arrived: Instant::now(),
    };
    let delivered = up.call(&call).await?;
    let (parts, body) = delivered.response.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    Ok(Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

async fn send(up: &Upstreams<Arc<Script>>, body: &str) -> Result<Answer, Failed> {
    send_with(up, Route::Messages, body, &[], None).await
}

const OPUS: &str =
    r#"{"model":"claude-opus-4-6","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#;
const OVERLOADED: &str =
    r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;

fn sse_event(name: &str, data: &str) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

fn start() -> String {
    sse_event(
        "message_start",
        r#"{"type":"message_start","message":{"model":"claude-opus-4-6","usage":{"input_tokens":3}}}"#,
    )
}

#[tokio::test(start_paused = true)]
async fn two_529s_then_success_is_three_upstream_calls_and_one_answer() {
    let script = Arc::new(Script::default());
    script.on(
        "a",
        vec![
            Step::Status(529, vec![], OVERLOADED),
            Step::Status(529, vec![], OVERLOADED),
            Step::Status(
                200,
                vec![],
                r#"{"type":"message","model":"claude-opus-4-6"}"#,
            ),
        ],
    );
    let up = single(&script);
    let a = send(&up, OPUS).await.unwrap();
    assert_eq!((a.status, script.calls()), (200, 3));
    assert_eq!(a.header("x-rampart-attempts"), Some("3"));
    assert_eq!(a.header("x-rampart-served-model"), Some("claude-opus-4-6"));
    assert_eq!(a.header("x-should-retry"), None);
    // Full-jitter backoff: the waits are at most 0.5 s and 1 s.
    let sent = script.sent();
    assert!(sent[1].at - sent[0].at <= Duration::from_millis(500));
    assert!(sent[2].at - sent[1].at <= Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_client_error_is_one_call_passed_through_with_should_retry_false() {
    let script = Arc::new(Script::default());
    let bad = r#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}"#;
    script.on("a", vec![Step::Status(400, vec![], bad)]);
    let up = single(&script);
    let a = send(&up, OPUS).await.unwrap();
    assert_eq!((a.status, script.calls()), (400, 1));
    assert_eq!(a.body, bad);
    assert_eq!(a.header("x-should-retry"), Some("false"));
}

#[tokio::test(start_paused = true)]
async fn after_the_last_attempt_the_client_gets_the_upstreams_error_with_should_retry_false() {
    let script = Arc::new(Script::default());
    script.on(
        "a",
        (0..3)
            .map(|_| Step::Status(529, vec![("retry-after", "1")], OVERLOADED))
            .collect(),
    );
    let up = single(&script);
    let t0 = Instant::now();
    let a = send(&up, OPUS).await.unwrap();
    assert_eq!((a.status, script.calls()), (529, 3));
    assert_eq!(a.body, OVERLOADED);
    assert_eq!(a.header("x-should-retry"), Some("false"));
    assert_eq!(a.header("retry-after"), Some("1"));
    // retry-after: 1 is honoured exactly between attempts.
    assert_eq!(Instant::now() - t0, Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_beyond_the_cap_is_not_waited_for() {
    let script = Arc::new(Script::default());
    script.on(
        "a",
        vec![Step::Status(503, vec![("retry-after", "30")], OVERLOADED)],
    );
    let up = single(&script);
    let t0 = Instant::now();
    let a = send(&up, OPUS).await.unwrap();
    assert_eq!((a.status, script.calls()), (503, 1));
    assert_eq!(Instant::now(), t0);
}

#[tokio::test(start_paused = true)]
async fn a_connect_failure_moves_to_another_target_at_once() {
    let script = Arc::new(Script::default());
    script.on("a", vec![Step::Fail(TransportFailure::Connect)]);
    script.on("b", vec![Step::Fail(TransportFailure::Connect)]);
    let up = gateway(
        &script,
        resilience(vec![target("a", &[]), target("b", &[])]),
        RoutingSettings::default(),
    );
    let t0 = Instant::now();
    let a = send(&up, OPUS).await.unwrap();
    let sent = script.sent();
    assert_eq!((a.status, sent.len()), (200, 3));
    assert_ne!(
        sent[0].target, sent[1].target,
        "the second attempt goes elsewhere"
    );
    assert!(sent[1].at == t0, "no backoff before trying another target");
}

#[tokio::test(start_paused = true)]
async fn timeouts_and_resets_become_distinct_errors() {
    for (step, status, text) in [
        (
            Step::Hang,
            504,
            "upstream timeout: the Anthropic API did not respond within 60000 ms",
        ),
        (
            Step::Fail(TransportFailure::ConnectTimeout),
            504,
            "upstream connect timeout: no connection to the Anthropic API within 5000 ms",
        ),
        (
            Step::Fail(TransportFailure::Connect),
            502,
            "upstream unreachable: Rampart could not connect to the Anthropic API",
        ),
        (
            Step::Fail(TransportFailure::Broken),
            502,
            "upstream error: the connection to the Anthropic API failed",
        ),
    ] {
        let script = Arc::new(Script::default());
        let steps = match step {
            Step::Hang => vec![Step::Hang, Step::Hang, Step::Hang],
            Step::Fail(f) => vec![Step::Fail(f), Step::Fail(f), Step::Fail(f)],
            _ => unreachable!(),
        };
        script.on("a", steps);
        let up = single(&script);
        let failed = send(&up, OPUS).await.err().unwrap();
        assert_eq!(failed.attempts, 3);
        let (_, s) = failed.error.kind_and_status();
        assert_eq!(
            (s.as_u16(), failed.error.to_string().as_str()),
            (status, text)
        );
        assert!(failed.error.is_upstream_failure());
    }
}

#[tokio::test(start_paused = true)]
async fn the_client_timeout_stops_all_work_when_the_client_gives_up() {
    let script = Arc::new(Script::default());
    script.on("a", vec![Step::Hang]);
    let up = single(&script);
    let t0 = Instant::now();
    let failed = send_with(
        &up,
        Route::Messages,
        OPUS,
        &[("x-stainless-timeout", "2")],
        None,
    )
    .await
    .err()
    .unwrap();
    assert_eq!(Instant::now() - t0, Duration::from_secs(2));
    assert_eq!(failed.error, ProxyError::ClientTimeout(2000));
    assert_eq!(script.calls(), 1, "no retry after the client gave up");
}

#[tokio::test(start_paused = true)]
async fn the_client_timeout_does_not_cut_a_stream_that_is_flowing() {
    let script = Arc::new(Script::default());
    let ping = sse_event("ping", r#"{"type":"ping"}"#);
    let stop = sse_event("message_stop", r#"{"type":"message_stop"}"#);
    // Events every second for five seconds, against a client timeout of two.
    let mut chunks = vec![(0, start())];
    chunks.extend((0..5).map(|_| (1_000, ping.clone())));
    chunks.push((0, stop.clone()));
    script.on("a", vec![Step::Sse(chunks)]);
    let up = single(&script);
    let a = send_with(
        &up,
        Route::Messages,
        OPUS,
        &[("x-stainless-timeout", "2")],
        None,
    )
    .await
    .unwrap();
    assert!(a.body.ends_with(&stop), "{}", a.body);
    assert!(!a.body.contains("event: error"));
}

#[tokio::test(start_paused = true)]
async fn the_route_deadline_ends_a_stream_with_a_timeout_event() {
    let script = Arc::new(Script::default());
    let ping = sse_event("ping", r#"{"type":"ping"}"#);
    let mut chunks = vec![(0, start())];
    chunks.extend((0..5).map(|_| (1_000, ping.clone())));
    script.on("a", vec![Step::Sse(chunks)]);
    let mut s = resilience(vec![target("a", &[])]);
    s.timeouts[0].total = Some(Duration::from_millis(2_500));
    let up = gateway(&script, s, RoutingSettings::default());
    let a = send(&up, OPUS).await.unwrap();
    assert_eq!(a.body.matches("event: ping").count(), 2);
    assert!(
        a.body.ends_with("event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"timeout_error\",\"message\":\"request deadline: no complete upstream response within the overall limit of 2500 ms\"}}\n\n"),
        "{}",
        a.body
    );
}

#[tokio::test(start_paused = true)]
async fn the_overall_deadline_bounds_retries_and_their_waits() {
    let script = Arc::new(Script::default());
    script.on(
        "a",
        vec![
            Step::Status(529, vec![("retry-after", "5")], OVERLOADED),
            Step::Status(200, vec![], "{}"),
        ],
    );
    let mut s = resilience(vec![target("a", &[])]);
    s.timeouts[0].total = Some(Duration::from_secs(3));
    let up = gateway(&script, s, RoutingSettings::default());
    let a = send(&up, OPUS).await.unwrap();
    assert_eq!(
        (a.status, script.calls()),
        (529, 1),
        "a 5 s wait would pass the deadline"
    );
    assert_eq!(a.header("x-should-retry"), Some("false"));
}

#[tokio::test(start_paused = true)]
async fn a_stream_whose_first_event_is_an_overloaded_error_is_retried_transparently() {
    let script = Arc::new(Script::default());
    let error = sse_event("error", OVERLOADED);
    script.on(
        "a",
        vec![
            Step::Sse(vec![(0, error)]),
            Step::Sse(vec![
                (0, start()),
                (10, sse_event("message_stop", r#"{"type":"message_stop"}"#)),
            ]),
        ],
    );
    let up = single(&script);
    let a = send(&up, OPUS).await.unwrap();
    assert_eq!((a.status, script.calls()), (200, 2));
    assert!(a.body.starts_with("event: message_start"), "{}", a.body);
    assert!(!a.body.contains("overloaded_error"));
    assert!(
        a.body
            .ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
    );
}

#[tokio::test(start_paused = true)]
async fn pings_before_the_first_event_are_held_back_too() {
    let script = Arc::new(Script::default());
    let ping = sse_event("ping", r#"{"type":"ping"}"#);
    script.on(
        "a",
        vec![
            Step::Sse(vec![(0, ping.clone()), (5, sse_event("error", OVERLOADED))]),
            Step::Sse(vec![(0, ping), (5, start())]),
        ],
    );
    let up = single(&script);
    let a = send(&up, OPUS).await.unwrap();
    assert_eq!(script.calls(), 2);
    assert!(a.body.contains("message_start") && !a.body.contains("overloaded"));
}

#[tokio::test(start_paused = true)]
async fn an_overloaded_first_event_every_time_ends_as_that_event_with_should_retry_false() {
    let script = Arc::new(Script::default());
    let error = sse_event("error", OVERLOADED);
    script.on(
        "a",
        (0..3)
            .map(|_| Step::Sse(vec![(0, error.clone())]))
            .collect(),
    );
    let up = single(&script);
    let a = send(&up, OPUS).await.unwrap();
    assert_eq!((a.status, script.calls()), (200, 3));
    assert_eq!(a.body, error);
    assert_eq!(a.header("x-should-retry"), Some("false"));
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_fails_after_bytes_were_sent_ends_with_a_well_formed_error_and_no_retry() {
    let script = Arc::new(Script::default());
    let delta = sse_event(
        "content_block_delta",
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}"#,
    );
    script.on(
        "a",
        vec![Step::Sse(vec![
            (0, start()),
            (5, delta.clone()),
            // Half an event, then the connection breaks.
            (5, "event: content_block_delta\ndata: {\"ty".to_owned()),
            (5, "ABORT".to_owned()),
        ])],
    );
    let up = single(&script);
    let a = send(&up, OPUS).await.unwrap();
    assert_eq!(script.calls(), 1);
    let expected_end = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"upstream connection lost mid-stream\"}}\n\n";
    assert_eq!(a.body, format!("{}{delta}{expected_end}", start()));
}

#[tokio::test(start_paused = true)]
async fn a_stream_idle_past_the_idle_timeout_ends_with_a_timeout_error_event() {
    let script = Arc::new(Script::default());
    script.on(
        "a",
        vec![Step::Sse(vec![
            (0, start()),
            (31_000, sse_event("ping", "{}")),
        ])],
    );
    let up = single(&script);
    let t0 = Instant::now();
    let a = send(&up, OPUS).await.unwrap();
    assert_eq!(Instant::now() - t0, Duration::from_secs(30));
    assert!(
        a.body.ends_with("event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"timeout_error\",\"message\":\"upstream idle timeout: the Anthropic API sent nothing for 30000 ms\"}}\n\n"),
        "{}",
        a.body
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_silent_before_its_first_event_is_retried_as_an_idle_timeout() {
    let script = Arc::new(Script::default());
    script.on(
        "a",
        vec![
            Step::Sse(vec![(40_000, start())]),
            Step::Sse(vec![(0, start())]),
        ],
    );
    let up = single(&script);
    let a = send(&up, OPUS).await.unwrap();
    assert_eq!((a.status, script.calls()), (200, 2));
    assert_eq!(a.body, start());
}

#[tokio::test(start_paused = true)]
async fn the_breaker_opens_sheds_to_the_healthy_target_probes_and_closes() {
    let script = Arc::new(Script::default());
    let up = gateway(
        &script,
        resilience(vec![target("a", &[]), target("b", &[])]),
        RoutingSettings::default(),
    );
    // `a` fails every time until further notice; every request still succeeds, on `b`.
    script.on(
        "a",
        (0..50)
            .map(|_| {
                Step::Status(
                    500,
                    vec![],
                    r#"{"type":"error","error":{"type":"api_error","message":"x"}}"#,
                )
            })
            .collect(),
    );
    for _ in 0..30 {
        let a = send(&up, OPUS).await.unwrap();
        assert_eq!(a.status, 200);
    }
    let pool = up.pool();
    assert_eq!(
        pool.targets()[0].breaker.state(),
        crate::breaker::State::Open
    );
    let to_a = script.sent().iter().filter(|s| s.target == "a").count();
    assert_eq!(
        to_a, 3,
        "three consecutive failures open the breaker; then no more traffic"
    );
    // After the open period one probe goes to `a`; it succeeds (the script is reset) and closes.
    script.steps.lock().unwrap().clear();
    tokio::time::advance(Duration::from_secs(10)).await;
    let before = script.calls();
    send(&up, OPUS).await.unwrap();
    let probe = &script.sent()[before];
    assert_eq!(probe.target, "a");
    assert_eq!(
        pool.targets()[0].breaker.state(),
        crate::breaker::State::Closed
    );
}

#[tokio::test(start_paused = true)]
async fn every_breaker_open_fails_fast_with_529_and_retry_after() {
    let script = Arc::new(Script::default());
    script.on(
        "a",
        (0..3)
            .map(|_| Step::Fail(TransportFailure::Connect))
            .collect(),
    );
    let up = single(&script);
    assert!(send(&up, OPUS).await.is_err());
    assert_eq!(script.calls(), 3);
    tokio::time::advance(Duration::from_secs(4)).await;
    let failed = send(&up, OPUS).await.err().unwrap();
    assert_eq!(script.calls(), 3, "no upstream call while open");
    assert_eq!(
        failed.error,
        ProxyError::NoUpstreamAvailable {
            model: "claude-opus-4-6".into(),
            retry_after_secs: 6
        }
    );
}

fn fallbacks() -> RoutingSettings {
    let mut r = RoutingSettings::default();
    r.fallbacks
        .insert("claude-opus-4-6".into(), vec!["claude-sonnet-4-6".into()]);
    r.aliases.insert("fast".into(), "claude-haiku-4-5".into());
    r
}

#[tokio::test(start_paused = true)]
async fn an_overloaded_model_falls_back_at_once_and_the_served_model_is_named() {
    let script = Arc::new(Script::default());
    script.on("a", vec![Step::Status(529, vec![], OVERLOADED)]);
    let up = gateway(&script, resilience(vec![target("a", &[])]), fallbacks());
    let t0 = Instant::now();
    let a = send(&up, OPUS).await.unwrap();
    let sent = script.sent();
    assert_eq!(a.status, 200);
    assert_eq!(
        sent.iter()
            .map(|s| s.model.clone().unwrap())
            .collect::<Vec<_>>(),
        ["claude-opus-4-6", "claude-sonnet-4-6"]
    );
    assert_eq!(sent[1].at, t0, "no wait before the fallback model");
    assert_eq!(
        a.header("x-rampart-served-model"),
        Some("claude-sonnet-4-6")
    );
    assert_eq!(
        a.header("x-rampart-fallback"),
        Some("claude-opus-4-6 -> claude-sonnet-4-6; overloaded")
    );
}

#[tokio::test(start_paused = true)]
async fn an_open_circuit_falls_back_without_an_upstream_call() {
    let script = Arc::new(Script::default());
    script.on(
        "opus",
        (0..3)
            .map(|_| Step::Fail(TransportFailure::Connect))
            .collect(),
    );
    let targets = vec![
        target("opus", &["claude-opus-*"]),
        target("rest", &["claude-sonnet-*", "claude-haiku-*"]),
    ];
    let mut s = resilience(targets);
    s.retry.max_attempts = 1;
    let up = gateway(&script, s, fallbacks());
    for _ in 0..3 {
        let _ = send(&up, OPUS).await;
    }
    assert_eq!(
        up.pool().targets()[0].breaker.state(),
        crate::breaker::State::Open
    );
    let before = script.calls();
    let a = send(&up, OPUS).await.unwrap();
    let sent = &script.sent()[before..];
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0].target.as_str(), sent[0].model.as_deref()),
        ("rest", Some("claude-sonnet-4-6"))
    );
    assert_eq!(
        a.header("x-rampart-fallback"),
        Some("claude-opus-4-6 -> claude-sonnet-4-6; circuit_open")
    );
}

#[tokio::test(start_paused = true)]
async fn fallbacks_skip_models_the_key_may_not_use() {
    let script = Arc::new(Script::default());
    script.on("a", vec![Step::Status(529, vec![], OVERLOADED)]);
    let mut s = resilience(vec![target("a", &[])]);
    s.retry.max_attempts = 2;
    let up = gateway(&script, s, fallbacks());
    let scopes = Scopes {
        endpoints: vec![],
        models: vec!["claude-opus-*".into()],
    };
    let a = send_with(&up, Route::Messages, OPUS, &[], Some(&scopes))
        .await
        .unwrap();
    assert!(
        script
            .sent()
            .iter()
            .all(|s| s.model.as_deref() == Some("claude-opus-4-6"))
    );
    assert_eq!((a.status, a.header("x-rampart-fallback")), (200, None));
}

#[tokio::test(start_paused = true)]
async fn an_alias_is_sent_as_its_model() {
    let script = Arc::new(Script::default());
    let up = gateway(&script, resilience(vec![target("a", &[])]), fallbacks());
    let body = r#"{"max_tokens":10,"model":"fast","messages":[]}"#;
    let a = send(&up, body).await.unwrap();
    assert_eq!(script.sent()[0].model.as_deref(), Some("claude-haiku-4-5"));
    assert_eq!(
        a.header("x-rampart-route"),
        Some("fast -> claude-haiku-4-5; alias")
    );
}

#[tokio::test(start_paused = true)]
async fn a_model_no_target_serves_is_404() {
    let script = Arc::new(Script::default());
    let up = gateway(
        &script,
        resilience(vec![target("a", &["claude-haiku-*"])]),
        RoutingSettings::default(),
    );
    let failed = send(&up, OPUS).await.err().unwrap();
    assert_eq!(
        failed.error,
        ProxyError::ModelNotServed("claude-opus-4-6".into())
    );
    assert_eq!(script.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_rate_limited_target_cools_down_and_the_retry_goes_to_another() {
    let script = Arc::new(Script::default());
    let limited = r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#;
    script.on(
        "a",
        vec![Step::Status(429, vec![("retry-after", "20")], limited)],
    );
    script.on(
        "b",
        vec![Step::Status(429, vec![("retry-after", "20")], limited)],
    );
    let up = gateway(
        &script,
        resilience(vec![target("a", &[]), target("b", &[])]),
        RoutingSettings::default(),
    );
    let t0 = Instant::now();
    let a = send(&up, OPUS).await.unwrap();
    let sent = script.sent();
    // 429 on one, at once the other; both now cool for 20 s, past the 10 s cap: no wait.
    assert_eq!((a.status, sent.len()), (429, 2));
    assert_ne!(sent[0].target, sent[1].target);
    assert_eq!((sent[1].at, Instant::now()), (t0, t0));
    assert_eq!(a.header("x-should-retry"), Some("false"));
}

#[tokio::test(start_paused = true)]
async fn a_retry_waits_for_a_short_cool_down_and_a_new_request_goes_anyway() {
    let script = Arc::new(Script::default());
    let limited = r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#;
    script.on(
        "a",
        vec![Step::Status(429, vec![("retry-after", "3")], limited)],
    );
    let up = single(&script);
    let t0 = Instant::now();
    let a = send(&up, OPUS).await.unwrap();
    assert_eq!((a.status, script.calls()), (200, 2));
    assert_eq!(script.sent()[1].at - t0, Duration::from_secs(3));
    // A 429 with a long wait: the retry gives up, but the next request is still sent.
    script.on(
        "a",
        vec![Step::Status(429, vec![("retry-after", "30")], limited)],
    );
    let a = send(&up, OPUS).await.unwrap();
    assert_eq!((a.status, script.calls()), (429, 3));
    let a = send(&up, OPUS).await.unwrap();
    assert_eq!((a.status, script.calls()), (200, 4));
}

#[tokio::test(start_paused = true)]
async fn a_cool_down_left_by_another_request_does_not_block_a_retry_after_an_overload() {
    let script = Arc::new(Script::default());
    let limited = r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#;
    script.on(
        "a",
        vec![
            Step::Status(429, vec![("retry-after", "30")], limited),
            Step::Status(529, vec![("retry-after", "1")], OVERLOADED),
        ],
    );
    let up = single(&script);
    assert_eq!(send(&up, OPUS).await.unwrap().status, 429);
    // `a` cools for 30 s; this request's own failure is an overload, so its retry goes anyway.
    let a = send(&up, OPUS).await.unwrap();
    assert_eq!((a.status, script.calls()), (200, 3));
}

#[tokio::test(start_paused = true)]
async fn the_retry_budget_stops_retries_when_spent() {
    let script = Arc::new(Script::default());
    script.on(
        "a",
        (0..10)
            .map(|_| Step::Status(529, vec![], OVERLOADED))
            .collect(),
    );
    let mut s = resilience(vec![target("a", &[])]);
    s.retry.budget_ratio = 0.0;
    s.retry.budget_min_per_sec = 0;
    let up = gateway(&script, s, RoutingSettings::default());
    let a = send(&up, OPUS).await.unwrap();
    assert_eq!((a.status, script.calls()), (529, 1));
    assert_eq!(a.header("x-should-retry"), Some("false"));
}

fn auto(source: TokenSource) -> RoutingSettings {
    let mut r = fallbacks();
    r.auto = Some(AutoRules {
        token_source: source,
        opus_input_tokens: 50_000,
        ..routing::test_rules()
    });
    r
}

#[tokio::test(start_paused = true)]
async fn auto_routes_by_size_tools_max_tokens_and_hint() {
    let script = Arc::new(Script::default());
    let up = gateway(
        &script,
        resilience(vec![target("a", &[])]),
        auto(TokenSource::Estimate),
    );
    let small = r#"{"model":"auto","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}"#;
    let a = send(&up, small).await.unwrap();
    assert_eq!(a.header("x-rampart-served-model"), Some("claude-haiku-4-5"));
    assert_eq!(
        a.header("x-rampart-route"),
        Some("auto -> claude-haiku-4-5; input_tokens 5 (estimate), no rule matched")
    );
    let tools = r#"{"model":"auto","max_tokens":100,"tools":[{"name":"t"}],"messages":[]}"#;
    let a = send(&up, tools).await.unwrap();
    assert_eq!(
        a.header("x-rampart-route"),
        Some("auto -> claude-sonnet-4-6; tools")
    );
    let long = format!(
        r#"{{"model":"auto","max_tokens":100,"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(400_000)
    );
    let a = send(&up, &long).await.unwrap();
    assert_eq!(
        a.header("x-rampart-route"),
        Some("auto -> claude-opus-4-6; input_tokens 100004 >= 50000 (estimate)")
    );
    let a = send_with(
        &up,
        Route::Messages,
        &long,
        &[("x-rampart-hint", "haiku")],
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        a.header("x-rampart-route"),
        Some("auto -> claude-haiku-4-5; hint haiku")
    );
    assert_eq!(
        script
            .sent()
            .iter()
            .map(|s| s.model.clone().unwrap())
            .collect::<Vec<_>>(),
        [
            "claude-haiku-4-5",
            "claude-sonnet-4-6",
            "claude-opus-4-6",
            "claude-haiku-4-5"
        ]
    );
    let bad = send_with(
        &up,
        Route::Messages,
        small,
        &[("x-rampart-hint", "gpt")],
        None,
    )
    .await
    .err()
    .unwrap();
    assert_eq!(
        bad.error,
        ProxyError::InvalidRequest("x-rampart-hint: must be one of haiku, sonnet, opus".into())
    );
}

#[tokio::test(start_paused = true)]
async fn auto_counts_tokens_upstream_once_and_caches_the_count() {
    let script = Arc::new(Script::default());
    script.on(
        "a",
        vec![Step::Status(200, vec![], r#"{"input_tokens":60000}"#)],
    );
    let up = gateway(
        &script,
        resilience(vec![target("a", &[])]),
        auto(TokenSource::Upstream),
    );
    let body = r#"{"model":"auto","max_tokens":100,"stream":false,"messages":[{"role":"user","content":"big"}]}"#;
    let a = send(&up, body).await.unwrap();
    assert_eq!(
        a.header("x-rampart-route"),
        Some("auto -> claude-opus-4-6; input_tokens 60000 >= 50000 (count_tokens)")
    );
    let a = send(&up, body).await.unwrap();
    assert_eq!(
        a.header("x-rampart-route"),
        Some("auto -> claude-opus-4-6; input_tokens 60000 >= 50000 (count_tokens, cached)")
    );
    let sent = script.sent();
    assert_eq!(
        sent.iter().map(|s| s.path.as_str()).collect::<Vec<_>>(),
        ["/v1/messages/count_tokens", "/v1/messages", "/v1/messages"]
    );
    assert_eq!(sent[0].model.as_deref(), Some("claude-sonnet-4-6"));
}

#[tokio::test(start_paused = true)]
async fn auto_falls_back_to_the_estimate_when_counting_fails() {
    let script = Arc::new(Script::default());
    script.on("a", vec![Step::Status(500, vec![], "{}")]);
    let up = gateway(
        &script,
        resilience(vec![target("a", &[])]),
        auto(TokenSource::Upstream),
    );
    let body = r#"{"model":"auto","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}"#;
    let a = send(&up, body).await.unwrap();
    assert_eq!(
        a.header("x-rampart-route"),
        Some(
            "auto -> claude-haiku-4-5; input_tokens 5 (estimate, count_tokens failed), no rule matched"
        )
    );
}

#[tokio::test(start_paused = true)]
async fn auto_picks_the_nearest_tier_a_scoped_key_may_use() {
    let script = Arc::new(Script::default());
    let up = gateway(
        &script,
        resilience(vec![target("a", &[])]),
        auto(TokenSource::Estimate),
    );
    let body = r#"{"model":"auto","max_tokens":100,"tools":[{"name":"t"}],"messages":[]}"#;
    let haiku_only = Scopes {
        endpoints: vec![],
        models: vec!["claude-haiku-*".into()],
    };
    let a = send_with(&up, Route::Messages, body, &[], Some(&haiku_only))
        .await
        .unwrap();
    assert_eq!(
        a.header("x-rampart-route"),
        Some("auto -> claude-haiku-4-5; tools; sonnet not allowed for this key")
    );
    let nothing = Scopes {
        endpoints: vec![],
        models: vec!["gpt-*".into()],
    };
    let failed = send_with(&up, Route::Messages, body, &[], Some(&nothing))
        .await
        .err()
        .unwrap();
    assert!(matches!(failed.error, ProxyError::Forbidden(_)));
    let _ = Features::default();
}

#[test]
fn event_framing_finds_whole_events() {
    assert_eq!(event_end(b"event: a\ndata: {}\n\nrest"), Some((17, 19)));
    assert_eq!(event_end(b"event: a\r\ndata: {}\r\n\r\nx"), Some((19, 22)));
    assert_eq!(event_end(b"event: a\ndata: {}\n"), None);
    assert_eq!(last_boundary(b"a\n\nb\n\nc"), Some(6));
    assert_eq!(last_boundary(b"a\n\n"), Some(3));
    assert_eq!(last_boundary(b"a\r\n\r\nb"), Some(5));
    assert_eq!(last_boundary(b"abc\n"), None);
    assert_eq!(
        event_name(b"event: message_start\ndata: {}"),
        Some("message_start")
    );
    assert_eq!(event_name(b"data: {\"type\":\"ping\"}"), Some("ping"));
    assert_eq!(event_name(b": comment"), None);
    assert_eq!(
        in_band_error_type(format!("event: error\ndata: {OVERLOADED}").as_bytes()),
        "overloaded_error"
    );
    assert_eq!(
        in_band_error_type(b"event: error\ndata: nonsense"),
        "api_error"
    );
}
