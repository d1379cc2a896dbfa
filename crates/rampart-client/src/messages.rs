//! `POST /v1/messages` (JSON and streamed) and `POST /v1/messages/count_tokens`.

use rampart_api::Message;
use rampart_api::params::{CountTokensParams, MessageCreateParams, MessageTokensCount};
use serde::Serialize;

use crate::batches::Batches;
use crate::client::Client;
use crate::error::Error;
use crate::request::{Call, Payload};
use crate::response::Response;
use crate::stream::MessageStream;

/// The Messages API of a [`Client`].
#[derive(Debug, Clone, Copy)]
pub struct Messages<'c> {
    client: &'c Client,
}

/// Body fields set by the client itself or modelled on [`MessageCreateParams`]: `extra` must not
/// repeat them, or the JSON would hold the key twice.
const RESERVED: [&str; 15] = [
    "model",
    "max_tokens",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "stop_sequences",
    "metadata",
    "thinking",
    "temperature",
    "top_p",
    "top_k",
    "service_tier",
    "cache_control",
    "stream",
];

#[derive(Serialize)]
struct Streaming<'p> {
    #[serde(flatten)]
    params: &'p MessageCreateParams,
    stream: bool,
}

impl<'c> Messages<'c> {
    pub(crate) const fn new(client: &'c Client) -> Self {
        Self { client }
    }

    /// Creates a message and waits for all of it.
    ///
    /// Like the SDKs, refuses (without sending) a request whose `max_tokens` could take longer
    /// than 10 minutes to generate (`max_tokens` over 21,333) unless the client's timeout was
    /// set explicitly: stream those instead.
    ///
    /// # Errors
    /// The API's error (after retries), a connection error or timeout, or
    /// [`Error::InvalidArgument`] for the cases above.
    pub async fn create(&self, params: &MessageCreateParams) -> Result<Response<Message>, Error> {
        check_extra(params)?;
        let options = &self.client.options;
        if !options.timeout_overridden && expected_seconds(params.max_tokens) > 600.0 {
            return Err(Error::InvalidArgument(
                "streaming is required for operations that may take longer than 10 minutes \
                 (max_tokens over 21,333): use messages().stream(), or set a timeout explicitly"
                    .into(),
            ));
        }
        self.client
            .json(Call::post("/v1/messages".to_owned(), params)?)
            .await
    }

    /// Creates a message as a stream of events; retries (as for `create`) happen only until the
    /// response headers arrive.
    ///
    /// # Errors
    /// As [`Messages::create`], for the part before the stream begins.
    pub async fn stream(&self, params: &MessageCreateParams) -> Result<MessageStream, Error> {
        check_extra(params)?;
        let body = Streaming {
            params,
            stream: true,
        };
        let call = Call::post("/v1/messages".to_owned(), &body)?.streaming("text/event-stream");
        let success = self.client.execute(&call).await?;
        match success.payload {
            Payload::Body(body) => Ok(MessageStream::new(
                body,
                success.headers,
                self.client.options.timeout,
            )),
            Payload::Bytes(_) => Err(Error::invalid_response(
                "expected an event stream",
                &success.headers,
            )),
        }
    }

    /// Counts the input tokens of a request (messages, system prompt and tools).
    ///
    /// # Errors
    /// The API's error (after retries), a connection error or timeout.
    pub async fn count_tokens(
        &self,
        params: &CountTokensParams,
    ) -> Result<Response<MessageTokensCount>, Error> {
        self.client
            .json(Call::post("/v1/messages/count_tokens".to_owned(), params)?)
            .await
    }

    /// Message batches.
    #[must_use]
    pub const fn batches(&self) -> Batches<'c> {
        Batches::new(self.client)
    }
}

pub(crate) fn check_extra(params: &MessageCreateParams) -> Result<(), Error> {
    match RESERVED.iter().find(|k| params.extra.contains_key(**k)) {
        Some(k) => Err(Error::InvalidArgument(format!(
            "params.extra must not hold {k:?}: set the field itself (streaming: messages().stream())"
        ))),
        None => Ok(()),
    }
}

/// The SDKs' estimate of the longest generation time for `max_tokens`: an hour per 128,000.
fn expected_seconds(max_tokens: u64) -> f64 {
    // max_tokens fits an f64 exactly far beyond any real value.
    #[allow(clippy::cast_precision_loss)]
    let tokens = max_tokens as f64;
    3600.0 * tokens / 128_000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_api::params::MessageParam;

    #[test]
    fn long_non_streaming_requests_start_at_the_sdks_threshold() {
        assert!(expected_seconds(21_333) <= 600.0);
        assert!(expected_seconds(21_334) > 600.0);
    }

    #[test]
    fn streaming_params_add_the_flag_once() {
        let p = MessageCreateParams::new("m", 1, vec![MessageParam::user("x")]);
        let v = serde_json::to_value(Streaming {
            params: &p,
            stream: true,
        })
        .unwrap();
        assert_eq!(v["stream"], true);
        assert_eq!(v["model"], "m");
        let mut with_stream = p.clone();
        with_stream.extra.insert("stream".into(), true.into());
        assert!(
            check_extra(&with_stream)
                .unwrap_err()
                .to_string()
                .contains("\"stream\"")
        );
        let mut dup = p;
        dup.extra.insert("model".into(), "x".into());
        assert!(check_extra(&dup).is_err());
    }
}
