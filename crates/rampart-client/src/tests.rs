//! The retry loop and the stream timeouts on paused time, through a scripted transport: the
//! backoff schedule, server-requested waits, `x-should-retry`, per-attempt timeouts and what each
//! attempt sends. (The same behaviour against the real simulator, with real time and fault
//! injection, is in `tests/it`.)

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use rampart_api::params::{MessageCreateParams, MessageParam};
use tokio::time::Instant;

use crate::error::BoxError;
use crate::transport::{ResponseFuture, Transport};
use crate::{Client, Error, Secret};

/// What the scripted server does for one request.
enum Reply {
    /// Answer with status, headers and body.
    Answer(u16, Vec<(&'static str, &'static str)>, &'static str),
    /// Answer with status and body this long after the request.
    Late(Duration, u16, &'static str),
    /// Never answer.
    Hang,
    /// Fail to connect.
    Refuse,
    /// 200 with these body chunks, then hang without ending.
    Stall(Vec<&'static str>),
    /// 200 with each chunk at its time after the response began (as a server sends, whether
    /// or not the client reads), then the end.
    Paced(Vec<(Duration, &'static str)>),
}

#[derive(Debug, Default)]
struct Scripted {
    replies: Mutex<VecDeque<ReplyBox>>,
    seen: Mutex<Vec<(Instant, http::HeaderMap)>>,
}

struct ReplyBox(Reply);

impl std::fmt::Debug for ReplyBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reply")
    }
}

impl Scripted {
    fn new(replies: Vec<Reply>) -> Arc<Self> {
        Arc::new(Self {
            replies: Mutex::new(replies.into_iter().map(ReplyBox).collect()),
            seen: Mutex::default(),
        })
    }

    fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Seconds between consecutive requests.
    fn gaps(&self) -> Vec<f64> {
        let seen = self.seen.lock().unwrap();
        seen.windows(2)
            .map(|w| (w[1].0 - w[0].0).as_secs_f64())
            .collect()
    }

    fn header(&self, call: usize, name: &str) -> String {
        self.seen.lock().unwrap()[call].1[name]
            .to_str()
            .unwrap()
            .to_owned()
    }
}

impl Transport for Scripted {
    fn send(&self, request: http::Request<Full<Bytes>>) -> ResponseFuture {
        self.seen
            .lock()
            .unwrap()
            .push((Instant::now(), request.headers().clone()));
        let reply = self.replies.lock().unwrap().pop_front();
        Box::pin(async move {
            match reply.map(|r| r.0) {
                Some(Reply::Answer(status, headers, body)) => {
                    let mut b = http::Response::builder().status(status);
                    for (k, v) in headers {
                        b = b.header(k, v);
                    }
                    let body = Full::new(Bytes::from_static(body.as_bytes()))
                        .map_err(|e| -> BoxError { match e {} })
                        .boxed();
                    Ok(b.body(body).unwrap())
                }
                Some(Reply::Stall(chunks)) => {
                    let frames = futures_util::stream::iter(chunks)
                        .map(|c| {
                            Ok::<_, BoxError>(http_body::Frame::data(Bytes::from_static(
                                c.as_bytes(),
                            )))
                        })
                        .chain(futures_util::stream::pending());
                    Ok(http::Response::builder()
                        .status(200)
                        .header("request-id", "req_stall")
                        .body(BodyExt::boxed(StreamBody::new(frames)))
                        .unwrap())
                }
                Some(Reply::Paced(chunks)) => {
                    let began = Instant::now();
                    let frames =
                        futures_util::stream::iter(chunks).then(move |(at, c)| async move {
                            tokio::time::sleep_until(began + at).await;
                            Ok::<_, BoxError>(http_body::Frame::data(Bytes::from_static(
                                c.as_bytes(),
                            )))
                        });
                    Ok(http::Response::builder()
                        .status(200)
                        .body(BodyExt::boxed(StreamBody::new(frames)))
                        .unwrap())
                }
                Some(Reply::Late(after, status, body)) => {
                    tokio::time::sleep(after).await;
                    let body = Full::new(Bytes::from_static(body.as_bytes()))
                        .map_err(|e| -> BoxError { match e {} })
                        .boxed();
                    Ok(http::Response::builder().status(status).body(body).unwrap())
                }
                Some(Reply::Refuse) => Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "connection refused",
                )) as BoxError),
                Some(Reply::Hang) | None => std::future::pending().await,
            }
        })
    }
}

const MESSAGE: &str = r#"{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":"hi"}],"model":"m","stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":1}}"#;

/// A `message_start` event, framed.
macro_rules! message_start {
    () => {
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"m\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}}\n\n"
    };
}

const MESSAGE_START: &str = message_start!();

fn ok() -> Reply {
    Reply::Answer(200, vec![("request-id", "req_ok")], MESSAGE)
}

fn status(code: u16) -> Reply {
    Reply::Answer(
        code,
        vec![],
        r#"{"type":"error","error":{"type":"api_error","message":"scripted"}}"#,
    )
}

fn client(script: &Arc<Scripted>) -> Client {
    Client::builder()
        .base_url("http://scripted.invalid")
        .api_key(Secret::new("sk-test".into()))
        .transport(script.clone())
        .build()
        .unwrap()
}

fn params() -> MessageCreateParams {
    MessageCreateParams::new("m", 16, vec![MessageParam::user("x")])
}

/// One `create` through a client for `script`.
async fn create(script: &Arc<Scripted>) -> Result<crate::Response<rampart_api::Message>, Error> {
    create_with(script, |c| c).await
}

/// One `create` through a copy of the client with other options.
async fn create_with(
    script: &Arc<Scripted>,
    adjust: impl FnOnce(Client) -> Client,
) -> Result<crate::Response<rampart_api::Message>, Error> {
    adjust(client(script)).messages().create(&params()).await
}

fn within(got: f64, low: f64, high: f64) -> bool {
    got >= low - 1e-6 && got <= high + 1e-6
}

#[tokio::test(start_paused = true)]
async fn two_529s_then_success_is_three_calls_on_the_sdk_backoff_schedule() {
    let script = Scripted::new(vec![status(529), status(529), ok()]);
    let msg = create(&script).await.unwrap();
    assert_eq!(
        (msg.text(), msg.request_id()),
        ("hi".into(), Some("req_ok"))
    );
    assert_eq!(script.calls(), 3);
    let gaps = script.gaps();
    assert!(within(gaps[0], 0.375, 0.5), "first retry after {gaps:?}");
    assert!(within(gaps[1], 0.75, 1.0), "second retry after {gaps:?}");
    let counts: Vec<String> = (0..3)
        .map(|i| script.header(i, "x-stainless-retry-count"))
        .collect();
    assert_eq!(counts, ["0", "1", "2"]);
}

#[tokio::test(start_paused = true)]
async fn the_backoff_doubles_up_to_eight_seconds() {
    let script = Scripted::new((0..7).map(|_| status(500)).collect());
    let err = create_with(&script, |c| c.with_max_retries(6))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InternalServer(_)), "{err:?}");
    assert_eq!(script.calls(), 7);
    for (gap, top) in script.gaps().iter().zip([0.5, 1.0, 2.0, 4.0, 8.0, 8.0]) {
        assert!(
            within(*gap, top * 0.75, top),
            "{gap} not in [{}, {top}]",
            top * 0.75
        );
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_and_retry_after_ms_set_the_wait() {
    let script = Scripted::new(vec![
        Reply::Answer(429, vec![("retry-after", "3")], "{}"),
        Reply::Answer(
            503,
            vec![("retry-after-ms", "1500"), ("retry-after", "9")],
            "{}",
        ),
        ok(),
    ]);
    create(&script).await.unwrap();
    let gaps = script.gaps();
    assert!(
        within(gaps[0], 3.0, 3.0) && within(gaps[1], 1.5, 1.5),
        "{gaps:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_last_error_is_returned_after_max_retries() {
    let script = Scripted::new(vec![status(500), status(502), status(529), ok()]);
    let err = create(&script).await.unwrap_err();
    assert!(matches!(err, Error::Overloaded(_)), "{err:?}");
    assert_eq!((script.calls(), err.status()), (3, Some(529)));
}

#[tokio::test(start_paused = true)]
async fn x_should_retry_false_stops_retries_and_true_forces_them() {
    let script = Scripted::new(vec![
        Reply::Answer(529, vec![("x-should-retry", "false")], "{}"),
        ok(),
    ]);
    let err = create(&script).await.unwrap_err();
    assert!(matches!(err, Error::Overloaded(_)), "{err:?}");
    assert_eq!(script.calls(), 1);

    let script = Scripted::new(vec![
        Reply::Answer(400, vec![("x-should-retry", "true")], "{}"),
        ok(),
    ]);
    create(&script).await.unwrap();
    assert_eq!(script.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn client_errors_are_not_retried_and_408_409_429_are() {
    for code in [400, 401, 403, 404, 413, 422] {
        let script = Scripted::new(vec![status(code), ok()]);
        let err = create(&script).await.unwrap_err();
        assert_eq!((err.status(), script.calls()), (Some(code), 1), "{code}");
    }
    for code in [408, 409, 429] {
        let script = Scripted::new(vec![status(code), ok()]);
        create(&script).await.unwrap();
        assert_eq!(script.calls(), 2, "{code}");
    }
}

#[tokio::test(start_paused = true)]
async fn connection_errors_are_retried() {
    let script = Scripted::new(vec![Reply::Refuse, ok()]);
    create(&script).await.unwrap();
    assert_eq!(script.calls(), 2);
    let script = Scripted::new(vec![Reply::Refuse, Reply::Refuse, Reply::Refuse]);
    let err = create(&script).await.unwrap_err();
    assert!(
        matches!(&err, Error::Connection { message, .. } if message.contains("connection refused")),
        "{err:?}"
    );
    assert_eq!(script.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn each_attempt_times_out_and_is_retried() {
    let script = Scripted::new(vec![Reply::Hang, Reply::Hang, Reply::Hang]);
    let started = Instant::now();
    let err = create_with(&script, |c| c.with_timeout(Duration::from_secs(10)))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(
        err.to_string(),
        "request timed out after 10 s (waiting for the response)"
    );
    assert_eq!(script.calls(), 3);
    let gaps = script.gaps();
    assert!(
        within(gaps[0], 10.375, 10.5) && within(gaps[1], 10.75, 11.0),
        "{gaps:?}"
    );
    let total = started.elapsed().as_secs_f64();
    assert!(within(total, 31.125, 31.5), "{total}");
    assert_eq!(script.header(0, "x-stainless-timeout"), "10");
}

/// A gateway's 504 for the client's own `x-stainless-timeout` arrives as the attempt's timer ends:
/// it is the attempt's timeout, reported as one. A 504 well before the deadline stays a 504.
#[tokio::test(start_paused = true)]
async fn a_gateway_timeout_at_the_deadline_is_the_attempts_timeout() {
    /// The error of one attempt (10 s timeout) answered by a 504 `timeout_error` `secs` after.
    async fn gateway_504_after(secs: u64) -> Error {
        let script = Scripted::new(vec![Reply::Late(
            Duration::from_secs(secs),
            504,
            r#"{"type":"error","error":{"type":"timeout_error","message":"client timeout"}}"#,
        )]);
        create_with(&script, |c| {
            c.with_timeout(Duration::from_secs(10)).with_max_retries(0)
        })
        .await
        .unwrap_err()
    }
    let err = gateway_504_after(10).await;
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(
        err.to_string(),
        "request timed out after 10 s (waiting for the response)"
    );
    let err = gateway_504_after(2).await;
    assert!(
        matches!(&err, Error::InternalServer(e) if e.status() == Some(504)),
        "{err:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn no_retries_when_max_retries_is_zero() {
    let script = Scripted::new(vec![status(529), ok()]);
    let err = create_with(&script, |c| c.with_max_retries(0))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Overloaded(_)));
    assert_eq!(script.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn every_attempt_sends_the_sdk_headers() {
    let script = Scripted::new(vec![ok()]);
    let c = Client::builder()
        .base_url("http://scripted.invalid")
        .api_key(Secret::new("sk-test".into()))
        .timeout(Duration::from_millis(2500))
        .header("anthropic-beta", "extended-cache-ttl-2025-04-11")
        .transport(script.clone())
        .build()
        .unwrap();
    c.messages().create(&params()).await.unwrap();
    for (name, want) in [
        ("x-api-key", "sk-test"),
        ("anthropic-version", "2023-06-01"),
        ("content-type", "application/json"),
        ("x-stainless-timeout", "2.5"),
        ("x-stainless-retry-count", "0"),
        ("x-stainless-lang", "rust"),
        ("anthropic-beta", "extended-cache-ttl-2025-04-11"),
    ] {
        assert_eq!(script.header(0, name), want, "{name}");
    }
    assert!(
        script
            .header(0, "user-agent")
            .starts_with("rampart-client/")
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_stream_times_out_between_events_and_is_not_retried() {
    let script = Scripted::new(vec![Reply::Stall(vec![MESSAGE_START]), ok()]);
    let mut stream = client(&script)
        .with_timeout(Duration::from_secs(30))
        .messages()
        .stream(&params())
        .await
        .unwrap();
    assert_eq!(stream.request_id(), Some("req_stall"));
    let first = stream.next_event().await.unwrap().unwrap();
    assert_eq!(first.name(), "message_start");
    let t0 = Instant::now();
    let err = stream.next_event().await.unwrap().unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(t0.elapsed(), Duration::from_secs(30));
    assert!(stream.next_event().await.is_none());
    assert_eq!(script.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_error_event_ends_the_stream_with_its_class_and_no_retry() {
    let body = concat!(
        message_start!(),
        "event: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n"
    );
    let script = Scripted::new(vec![
        Reply::Answer(200, vec![("request-id", "req_e")], body),
        ok(),
    ]);
    let stream = client(&script).messages().stream(&params()).await.unwrap();
    let err = stream.final_message().await.unwrap_err();
    assert!(matches!(err, Error::Overloaded(_)), "{err:?}");
    assert_eq!((err.status(), err.request_id()), (None, Some("req_e")));
    assert_eq!(script.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_idle_timeout_counts_only_while_waiting_for_data() {
    // The consumer is away for twice the timeout after the first event; the rest arrives half a
    // timeout after it comes back: no timeout, because only waiting counts.
    let idle = Duration::from_secs(10);
    let rest = concat!(
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n"
    );
    let script = Scripted::new(vec![Reply::Paced(vec![
        (Duration::ZERO, MESSAGE_START),
        (idle * 5 / 2, rest),
    ])]);
    let mut stream = client(&script)
        .with_timeout(idle)
        .messages()
        .stream(&params())
        .await
        .unwrap();
    assert_eq!(
        stream.next_event().await.unwrap().unwrap().name(),
        "message_start"
    );
    tokio::time::sleep(idle * 2).await;
    assert_eq!(
        stream.next_event().await.unwrap().unwrap().name(),
        "message_stop"
    );
    assert!(stream.next_event().await.is_none());
    assert_eq!(stream.into_message().unwrap().id, "msg_1");
}
