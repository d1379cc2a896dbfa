//! Response construction: the body type, JSON and error responses, and the headers every response
//! carries (`request-id`, `anthropic-organization-id`, the rate-limit family, `retry-after`).

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::Frame;

use crate::error::ApiError;

/// Errors a body can end with (an aborted stream).
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every simulator response.
pub(crate) type SimBody = UnsyncBoxBody<Bytes, BoxError>;

/// The fixed organisation id the simulator reports.
pub(crate) const ORGANIZATION_ID: &str = "5f3c0d7e-0a1b-4c2d-9e8f-51a7e0c0ffee";

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A complete body.
pub(crate) fn full(bytes: impl Into<Bytes>) -> SimBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body sent after `delay` (headers go out first).
pub(crate) fn delayed(bytes: Bytes, delay: Duration) -> SimBody {
    let stream = futures_util::stream::once(async move {
        tokio::time::sleep(delay).await;
        Ok::<_, BoxError>(Frame::data(bytes))
    });
    StreamBody::new(stream).boxed_unsync()
}

/// A simulated failure: an aborted body or a dropped connection.
#[derive(Debug)]
pub(crate) struct Simulated(pub &'static str);

impl std::fmt::Display for Simulated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Simulated {}

/// The error an aborted body ends with.
pub(crate) const ABORTED: Simulated = Simulated("simulated abort of the response body");

/// A body that sends the first half of `bytes`, then fails so the client sees a truncated response.
pub(crate) fn truncated(bytes: Bytes) -> SimBody {
    let half = bytes.slice(..bytes.len() / 2);
    let stream = futures_util::stream::unfold(Some(half), |state| async move {
        match state {
            Some(half) => Some((Ok(Frame::data(half)), None)),
            None => {
                // Let hyper flush what was sent before the connection is torn down.
                tokio::time::sleep(Duration::from_millis(1)).await;
                Some((Err::<Frame<Bytes>, BoxError>(Box::new(ABORTED)), None))
            }
        }
    });
    // The stream never ends on its own after the error: hyper stops polling at the first error.
    StreamBody::new(stream).boxed_unsync()
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<SimBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, JSON);
    resp
}

/// A JSON response with a serialisable value.
pub(crate) fn json_value<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<SimBody> {
    match serde_json::to_vec(value) {
        Ok(body) => json(status, body),
        Err(_) => error(
            &ApiError::new(rampart_api::ErrorType::ApiError, "Internal server error"),
            "",
        ),
    }
}

/// The error response for `err`: envelope with `request_id`, and `retry-after` when set.
pub(crate) fn error(err: &ApiError, request_id: &str) -> Response<SimBody> {
    let envelope = err.envelope().with_request_id(request_id);
    let status = StatusCode::from_u16(err.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = json(status, envelope.to_json());
    if let Some(secs) = err.retry_after {
        resp.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if let Some(ms) = err.retry_after_ms {
        resp.headers_mut().insert(
            HeaderName::from_static("retry-after-ms"),
            HeaderValue::from(ms),
        );
    }
    resp
}

static RL_NAMES: [[HeaderName; 3]; 4] = [
    [
        HeaderName::from_static("anthropic-ratelimit-requests-limit"),
        HeaderName::from_static("anthropic-ratelimit-requests-remaining"),
        HeaderName::from_static("anthropic-ratelimit-requests-reset"),
    ],
    [
        HeaderName::from_static("anthropic-ratelimit-tokens-limit"),
        HeaderName::from_static("anthropic-ratelimit-tokens-remaining"),
        HeaderName::from_static("anthropic-ratelimit-tokens-reset"),
    ],
    [
        HeaderName::from_static("anthropic-ratelimit-input-tokens-limit"),
        HeaderName::from_static("anthropic-ratelimit-input-tokens-remaining"),
        HeaderName::from_static("anthropic-ratelimit-input-tokens-reset"),
    ],
    [
        HeaderName::from_static("anthropic-ratelimit-output-tokens-limit"),
        HeaderName::from_static("anthropic-ratelimit-output-tokens-remaining"),
        HeaderName::from_static("anthropic-ratelimit-output-tokens-reset"),
    ],
];

/// (limit, remaining) per family: generous and constant.
const RL_VALUES: [(&str, &str); 4] = [
    ("50000", "49999"),
    ("20000000", "20000000"),
    ("16000000", "16000000"),
    ("4000000", "4000000"),
];

/// Marks a response whose request limit is reported exhausted until this many seconds from now
/// (the `exhausted` fault).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exhausted(pub u64);

/// Adds the headers every response carries.
pub(crate) fn decorate(resp: &mut Response<SimBody>, request_id: &str) {
    let exhausted = resp.extensions().get::<Exhausted>().copied();
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(HeaderName::from_static("request-id"), v);
    }
    headers.insert(
        HeaderName::from_static("anthropic-organization-id"),
        HeaderValue::from_static(ORGANIZATION_ID),
    );
    let reset = reset_time(60);
    for (names, (limit, remaining)) in RL_NAMES.iter().zip(RL_VALUES) {
        let [n_limit, n_remaining, n_reset] = names;
        headers.insert(n_limit.clone(), HeaderValue::from_static(limit));
        headers.insert(n_remaining.clone(), HeaderValue::from_static(remaining));
        headers.insert(n_reset.clone(), reset.clone());
    }
    if let Some(Exhausted(secs)) = exhausted {
        let [_, n_remaining, n_reset] = &RL_NAMES[0];
        headers.insert(n_remaining.clone(), HeaderValue::from_static("0"));
        headers.insert(n_reset.clone(), reset_time(secs));
    }
}

/// `secs` seconds from now, RFC 3339 with second precision.
fn reset_time(secs: u64) -> HeaderValue {
    let secs = i64::try_from(secs).unwrap_or(i64::MAX);
    let t = time::OffsetDateTime::now_utc() + time::Duration::seconds(secs);
    let t = t.replace_nanosecond(0).unwrap_or(t);
    let text = t
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("1970-01-01T00:00:00Z"))
}

/// RFC 3339 text of a wall-clock time.
pub(crate) fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
