//! One API call: headers, per-attempt timeouts and the SDKs' retry loop (see [`crate::retry`]).
//!
//! An attempt of a JSON call lasts until its whole body has arrived, so a body cut off mid-way is
//! a connection error that is retried; a streaming call's attempt ends at the response headers,
//! after which nothing is retried (the stream applies the timeout between its pieces).

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt, Full};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::client::Client;
use crate::error::{ApiError, BoxError, Error};
use crate::response::Response;
use crate::retry::{next_delay, should_retry};
use crate::transport::Body;

/// The largest JSON response body accepted.
const MAX_JSON_BODY: usize = 32 << 20;
/// The most of an error body that is read.
const MAX_ERROR_BODY: usize = 1 << 20;

/// What to send.
#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) method: Method,
    /// Path and query, starting with `/`.
    pub(crate) path: String,
    pub(crate) body: Option<Bytes>,
    pub(crate) accept: &'static str,
    /// Hand back the body unread (SSE, JSONL) instead of reading it within the attempt.
    pub(crate) stream: bool,
}

impl Call {
    pub(crate) fn get(path: String) -> Self {
        Self {
            method: Method::GET,
            path,
            body: None,
            accept: "application/json",
            stream: false,
        }
    }

    pub(crate) fn delete(path: String) -> Self {
        Self {
            method: Method::DELETE,
            ..Self::get(path)
        }
    }

    pub(crate) fn post(path: String, body: &impl Serialize) -> Result<Self, Error> {
        let json = serde_json::to_vec(body).map_err(|e| {
            Error::InvalidArgument(format!("the request cannot be serialised: {e}"))
        })?;
        Ok(Self {
            method: Method::POST,
            body: Some(Bytes::from(json)),
            ..Self::get(path)
        })
    }

    pub(crate) const fn streaming(mut self, accept: &'static str) -> Self {
        self.accept = accept;
        self.stream = true;
        self
    }
}

/// A successful (2xx) response.
pub(crate) struct Success {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) payload: Payload,
}

pub(crate) enum Payload {
    /// The whole body (JSON calls).
    Bytes(Bytes),
    /// The body, unread (streaming calls).
    Body(Body),
}

/// How an attempt ended.
enum Step {
    Done(Result<Success, Error>),
    /// Try again, waiting as these response headers ask (none for connection errors).
    Retry {
        headers: Option<HeaderMap>,
        reason: String,
    },
}

impl Client {
    /// `call` and decode its JSON body as `T`.
    pub(crate) async fn json<T: DeserializeOwned>(&self, call: Call) -> Result<Response<T>, Error> {
        let Success {
            status,
            headers,
            payload,
        } = self.execute(&call).await?;
        let Payload::Bytes(body) = payload else {
            return Err(Error::invalid_response("expected a JSON body", &headers));
        };
        match serde_json::from_slice(&body) {
            Ok(data) => Ok(Response::new(data, status, headers)),
            Err(e) => Err(Error::invalid_response(
                format!(
                    "the {} response does not match the API: {e}",
                    status.as_u16()
                ),
                &headers,
            )),
        }
    }

    /// `call` with retries; a 2xx response, or the last attempt's error.
    pub(crate) async fn execute(&self, call: &Call) -> Result<Success, Error> {
        let max = self.options.max_retries;
        let mut retries_taken = 0;
        loop {
            let (headers, reason) =
                match self.attempt(call, retries_taken, retries_taken < max).await {
                    Step::Done(result) => return result,
                    Step::Retry { headers, reason } => (headers, reason),
                };
            let delay = next_delay(&self.options.backoff, retries_taken, headers.as_ref());
            tracing::debug!(
                method = %call.method,
                path = %call.path,
                %reason,
                retry = retries_taken + 1,
                of = max,
                delay_ms = delay.as_millis(),
                "retrying"
            );
            tokio::time::sleep(delay).await;
            retries_taken += 1;
        }
    }

    async fn attempt(&self, call: &Call, retries_taken: u32, can_retry: bool) -> Step {
        let timeout = self.options.timeout;
        let deadline = Instant::now() + timeout;
        let retry_or_fail = |error: Error| {
            if can_retry {
                Step::Retry {
                    headers: None,
                    reason: error.to_string(),
                }
            } else {
                Step::Done(Err(error))
            }
        };
        let timed_out = |phase: &'static str| {
            retry_or_fail(Error::Timeout {
                after: timeout,
                phase,
            })
        };
        let request = match self.request(call, retries_taken) {
            Ok(r) => r,
            Err(e) => return Step::Done(Err(e)),
        };
        let response =
            match tokio::time::timeout_at(deadline, self.shared.transport.send(request)).await {
                Err(_) => return timed_out("waiting for the response"),
                Ok(Err(e)) => return retry_or_fail(Error::connection(e)),
                Ok(Ok(r)) => r,
            };
        let (parts, body) = response.into_parts();
        let (status, headers) = (parts.status, parts.headers);
        // A gateway that honours the `x-stainless-timeout` sent with this attempt answers 504 when
        // that time is up, the instant this attempt's own timer ends (it started the clock later,
        // when the request arrived): whichever of the two is seen first, the attempt timed out.
        if status == StatusCode::GATEWAY_TIMEOUT && Instant::now() >= deadline {
            return timed_out("waiting for the response");
        }
        if status.is_success() {
            if call.stream {
                return Step::Done(Ok(Success {
                    status,
                    headers,
                    payload: Payload::Body(body),
                }));
            }
            return match tokio::time::timeout_at(deadline, collect(body, MAX_JSON_BODY)).await {
                Err(_) => timed_out("reading the response"),
                Ok(Err(Collect::Failed(e))) => retry_or_fail(Error::connection(e)),
                Ok(Err(Collect::TooLarge)) => Step::Done(Err(Error::invalid_response(
                    format!("the response body is over {} MiB", MAX_JSON_BODY >> 20),
                    &headers,
                ))),
                Ok(Ok(bytes)) => Step::Done(Ok(Success {
                    status,
                    headers,
                    payload: Payload::Bytes(bytes),
                })),
            };
        }
        if can_retry && should_retry(status, &headers) {
            return Step::Retry {
                reason: format!("HTTP {}", status.as_u16()),
                headers: Some(headers),
            };
        }
        // The error body, bounded in size and by the attempt's deadline; what cannot be read is
        // left out and the error is built from the status.
        let body = match tokio::time::timeout_at(deadline, collect(body, MAX_ERROR_BODY)).await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(Collect::Failed(_)) | Err(Collect::TooLarge)) | Err(_) => Bytes::new(),
        };
        Step::Done(Err(Error::from_api(ApiError::from_response(
            status, headers, &body,
        ))))
    }

    fn request(
        &self,
        call: &Call,
        retries_taken: u32,
    ) -> Result<http::Request<Full<Bytes>>, Error> {
        let url = format!("{}{}", self.shared.base, call.path);
        let mut request = http::Request::builder()
            .method(call.method.clone())
            .uri(&url)
            .body(Full::new(call.body.clone().unwrap_or_default()))
            .map_err(|e| {
                Error::InvalidArgument(format!("cannot build a request for {url}: {e}"))
            })?;
        let h = request.headers_mut();
        h.insert("x-api-key", self.shared.api_key.clone());
        h.insert(
            "anthropic-version",
            HeaderValue::from_static(rampart_api::ANTHROPIC_VERSION),
        );
        h.insert(header::ACCEPT, HeaderValue::from_static(call.accept));
        if call.body.is_some() {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        h.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        h.insert("x-stainless-lang", HeaderValue::from_static("rust"));
        h.insert(
            "x-stainless-package-version",
            HeaderValue::from_static(env!("CARGO_PKG_VERSION")),
        );
        h.insert(
            "x-stainless-os",
            HeaderValue::from_static(std::env::consts::OS),
        );
        h.insert(
            "x-stainless-arch",
            HeaderValue::from_static(std::env::consts::ARCH),
        );
        h.insert("x-stainless-runtime", HeaderValue::from_static("tokio"));
        h.insert("x-stainless-retry-count", HeaderValue::from(retries_taken));
        if let Ok(v) = HeaderValue::from_str(&seconds(self.options.timeout)) {
            h.insert("x-stainless-timeout", v);
        }
        h.extend(self.options.headers.clone());
        Ok(request)
    }
}

const USER_AGENT: &str = concat!("rampart-client/", env!("CARGO_PKG_VERSION"));

/// Seconds as the SDKs write them: whole numbers without a fraction (`600`), else up to
/// millisecond precision (`0.25`).
fn seconds(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        (ms / 1000).to_string()
    } else {
        let s = format!("{}.{:03}", ms / 1000, ms % 1000);
        s.trim_end_matches('0').to_owned()
    }
}

pub(crate) enum Collect {
    Failed(BoxError),
    TooLarge,
}

/// Reads a whole body of at most `max` bytes.
pub(crate) async fn collect(mut body: Body, max: usize) -> Result<Bytes, Collect> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Collect::Failed)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                return Err(Collect::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Percent-encodes one path segment (ids are opaque); refuses the empty, `.` and `..` segments.
pub(crate) fn segment(what: &str, id: &str) -> Result<String, Error> {
    if id.is_empty() || id == "." || id == ".." {
        return Err(Error::InvalidArgument(format!(
            "{what} must be a non-empty id, got {id:?}"
        )));
    }
    Ok(encode(id))
}

/// Percent-encodes everything but the URL-unreserved characters.
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timeouts_are_written_like_the_sdks() {
        assert_eq!(seconds(Duration::from_secs(600)), "600");
        assert_eq!(seconds(Duration::from_millis(250)), "0.25");
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5");
        assert_eq!(seconds(Duration::from_micros(10)), "0");
    }

    #[test]
    fn ids_are_encoded_and_path_tricks_refused() {
        assert_eq!(segment("id", "msgbatch_01AB").unwrap(), "msgbatch_01AB");
        assert_eq!(segment("id", "a/b?c#d e").unwrap(), "a%2Fb%3Fc%23d%20e");
        assert_eq!(segment("id", "é").unwrap(), "%C3%A9");
        for bad in ["", ".", ".."] {
            assert!(segment("batch id", bad).is_err());
        }
    }
}
