//! [`MessageStream`]: the events of a streamed `POST /v1/messages` as an async [`Stream`], with
//! the message accumulated as they pass.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::Stream;
use http::HeaderMap;
use rampart_api::Message;
use rampart_api::stream::StreamEvent;

use crate::accumulate::MessageAccumulator;
use crate::body::BodyReader;
use crate::error::{ApiError, Error, header_str};
use crate::sse::{SseDecoder, SseEvent};
use crate::transport::Body;

/// The most one SSE event (or line) may hold.
const MAX_EVENT: usize = 16 << 20;

/// The event types the stream knows; others are skipped, as the API asks of clients.
const KNOWN_EVENTS: [&str; 7] = [
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
    "error",
];

/// A streamed message: a [`Stream`] of [`StreamEvent`]s (pings and unknown event types are
/// skipped) that also accumulates the [`Message`].
///
/// An `event: error` from the server ends the stream with the matching [`Error`] (e.g.
/// [`Error::Overloaded`] with no status); so do a broken connection ([`Error::Connection`]), no
/// data for the timeout ([`Error::Timeout`]) and a stream that ends before `message_stop`
/// ([`Error::InvalidResponse`]). Nothing is retried once the stream has begun, as in the SDKs.
///
/// ```no_run
/// # async fn run(client: rampart_client::Client, params: rampart_client::types::MessageCreateParams) -> Result<(), rampart_client::Error> {
/// use rampart_client::types::stream::{Delta, StreamEvent};
///
/// let mut stream = client.messages().stream(&params).await?;
/// while let Some(event) = stream.next_event().await {
///     if let StreamEvent::ContentBlockDelta { delta: Delta::TextDelta { text }, .. } = event? {
///         print!("{text}");
///     }
/// }
/// let message = stream.into_message()?; // the same as `create` would have returned
/// # Ok(()) }
/// ```
pub struct MessageStream {
    reader: BodyReader,
    decoder: SseDecoder,
    pending: VecDeque<SseEvent>,
    accumulator: MessageAccumulator,
    headers: HeaderMap,
    done: bool,
}

impl std::fmt::Debug for MessageStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageStream")
            .field("request_id", &self.request_id())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl MessageStream {
    pub(crate) fn new(body: Body, headers: HeaderMap, idle: Duration) -> Self {
        Self {
            reader: BodyReader::new(body, idle),
            decoder: SseDecoder::new(MAX_EVENT),
            pending: VecDeque::new(),
            accumulator: MessageAccumulator::new(),
            headers,
            done: false,
        }
    }

    /// The `request-id` response header.
    #[must_use]
    pub fn request_id(&self) -> Option<&str> {
        header_str(&self.headers, "request-id")
    }

    /// The response headers.
    #[must_use]
    pub const fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The message accumulated so far.
    #[must_use]
    pub const fn current_message(&self) -> Option<&Message> {
        self.accumulator.message()
    }

    /// The next event, or `None` at the end.
    pub async fn next_event(&mut self) -> Option<Result<StreamEvent, Error>> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    /// The accumulated message once the stream has been read to its end.
    ///
    /// # Errors
    /// [`Error::InvalidResponse`] when the stream did not reach `message_stop`.
    pub fn into_message(self) -> Result<Message, Error> {
        let request_id = self.request_id().map(str::to_owned);
        self.accumulator
            .into_message()
            .map_err(|e| with_request_id(e, request_id))
    }

    /// Reads the rest of the stream and returns the final message.
    ///
    /// # Errors
    /// The stream's error, if it ends with one.
    pub async fn final_message(mut self) -> Result<Message, Error> {
        while let Some(event) = self.next_event().await {
            event?;
        }
        self.into_message()
    }

    fn fail(&mut self, error: Error) -> Poll<Option<Result<StreamEvent, Error>>> {
        self.done = true;
        self.pending.clear();
        Poll::Ready(Some(Err(error)))
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<StreamEvent, Error>>> {
        loop {
            if let Some(sse) = self.pending.pop_front() {
                match self.parse(&sse) {
                    Ok(None) => continue,
                    Ok(Some(event)) => {
                        if let Err(e) = self.accumulator.push(&event) {
                            let id = self.request_id().map(str::to_owned);
                            return self.fail(with_request_id(e, id));
                        }
                        return Poll::Ready(Some(Ok(event)));
                    }
                    Err(e) => return self.fail(e),
                }
            }
            if self.done {
                return Poll::Ready(None);
            }
            match ready!(self.reader.poll_chunk(cx)) {
                Some(Ok(data)) => {
                    let mut out = Vec::new();
                    if let Err(e) = self.decoder.push(&data, &mut out) {
                        let error = Error::invalid_response(
                            format!("a stream event is over {} MiB", e.0 >> 20),
                            &self.headers,
                        );
                        return self.fail(error);
                    }
                    self.pending.extend(out);
                }
                Some(Err(e)) => return self.fail(e),
                None => {
                    self.done = true;
                    if !self.accumulator.is_complete() {
                        let error = Error::invalid_response(
                            "the stream ended before message_stop",
                            &self.headers,
                        );
                        return self.fail(error);
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }

    /// The typed event for `sse`; `None` for pings and unknown types; an `error` event is the
    /// stream's error.
    fn parse(&self, sse: &SseEvent) -> Result<Option<StreamEvent>, Error> {
        #[derive(serde::Deserialize)]
        struct Tag {
            #[serde(rename = "type")]
            kind: String,
        }
        if sse.event == "ping" {
            return Ok(None);
        }
        if sse.event == "error" {
            return Err(Error::from_api(ApiError::from_stream_event(
                &sse.data,
                &self.headers,
            )));
        }
        match serde_json::from_str::<StreamEvent>(&sse.data) {
            Ok(StreamEvent::Ping) => Ok(None),
            Ok(StreamEvent::Error { .. }) => Err(Error::from_api(ApiError::from_stream_event(
                &sse.data,
                &self.headers,
            ))),
            Ok(event) => Ok(Some(event)),
            Err(e) => match serde_json::from_str::<Tag>(&sse.data) {
                Ok(tag) if !KNOWN_EVENTS.contains(&tag.kind.as_str()) => Ok(None),
                _ => Err(Error::invalid_response(
                    format!("a {:?} event is not valid: {e}", sse.event),
                    &self.headers,
                )),
            },
        }
    }
}

impl Stream for MessageStream {
    type Item = Result<StreamEvent, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_event(cx)
    }
}

fn with_request_id(e: Error, id: Option<String>) -> Error {
    match e {
        Error::InvalidResponse {
            message,
            request_id: None,
        } => Error::InvalidResponse {
            message,
            request_id: id,
        },
        other => other,
    }
}
