//! A Rust SDK for Anthropic's Messages API — for the API itself or for Rampart in front of it.
//!
//! Typed requests and responses (the wire types of [`rampart_api`], re-exported as [`types`]),
//! streaming as an async [`Stream`](futures_util::Stream) of events with the final message
//! accumulated on the way, token counting, the model catalogue and message batches; with the
//! official SDKs' retry policy, timeouts and request ids.
//!
//! ```no_run
//! use rampart_client::Client;
//! use rampart_client::types::{MessageCreateParams, MessageParam};
//!
//! # async fn run() -> Result<(), rampart_client::Error> {
//! let client = Client::from_env()?; // ANTHROPIC_BASE_URL (default the API), ANTHROPIC_API_KEY
//! let params = MessageCreateParams::new("claude-sonnet-4-6", 512, vec![MessageParam::user("Hello, Claude")])
//!     .system("Answer in one sentence.");
//! let message = client.messages().create(&params).await?;
//! println!("{}", message.text());
//! println!("{:?} tokens in, {} out, request {:?}", message.usage.input_tokens, message.usage.output_tokens, message.request_id());
//! # Ok(()) }
//! ```
//!
//! # Against Rampart
//!
//! `rampart demo` prints `ANTHROPIC_BASE_URL` and `ANTHROPIC_API_KEY`; export them and
//! [`Client::from_env`] talks to the gateway (and through it to the simulator). The examples in
//! `examples/` run that way: `cargo run -p rampart-client --example ask -- "echo: hi"`.
//!
//! # Configuration
//!
//! [`Client::builder`] sets the base URL, the API key (a [`Secret`]: its `Debug` is redacted and
//! it is sent marked sensitive), the per-attempt timeout (default 10 minutes), the connect
//! timeout (5 s), the retry limit (2) and extra headers (e.g. `anthropic-beta`).
//! [`ClientBuilder::from_env`] fills what is not set from `ANTHROPIC_BASE_URL` and
//! `ANTHROPIC_API_KEY`. [`Client::with_timeout`], [`Client::with_max_retries`] and
//! [`Client::with_header`] make a copy with other settings that shares the connection pool — the
//! per-request options of the SDKs.
//!
//! # Retries and timeouts
//!
//! As the official SDKs (see [`retry`]): up to 2 retries; `x-should-retry: true|false` decides
//! first, else 408, 409, 429 and 5xx (529 included) and connection errors and timeouts are retried;
//! the wait is `retry-after-ms` / `retry-after` when given, else 0.5 s doubling to 8 s, minus up to
//! a quarter of jitter. Every attempt sends `x-stainless-retry-count` and `x-stainless-timeout`
//! (the timeout in seconds), so a gateway can avoid multiplying retries and stop working when the
//! client has given up. A stream is retried only until its response headers arrive.
//!
//! # Errors and request ids
//!
//! [`Error`] has one variant per SDK error class ([`Error::Authentication`],
//! [`Error::PermissionDenied`], [`Error::NotFound`], [`Error::RateLimit`], [`Error::Overloaded`],
//! [`Error::InternalServer`], [`Error::Connection`], [`Error::Timeout`], …); API errors carry an
//! [`ApiError`] with the status, `error.type`, message, headers and `request-id`. Successful
//! calls return a [`Response`] that derefs to the body and also gives the `request-id`.
//!
//! # Streaming
//!
//! [`Messages::stream`](messages::Messages::stream) returns a [`MessageStream`]: read its
//! events (text, thinking and tool-input deltas) as they come, then
//! [`MessageStream::into_message`] gives the same [`Message`](types::Message) that `create`
//! would have returned. [`MessageAccumulator`] does the folding on its own for events from
//! elsewhere.
//!
//! # Batches
//!
//! [`Client::batches`] creates a batch from typed requests, retrieves and lists batches, waits
//! until one has ended, cancels, deletes, and streams the results line by line
//! ([`BatchResults`]).
//!
//! # Security
//!
//! Redirects are never followed and a batch's `results_url` is not either: the key is only ever
//! sent to the configured base URL. TLS is rustls with aws-lc-rs and the OS trust store.

pub mod accumulate;
pub mod batches;
mod body;
pub mod client;
pub mod error;
mod lines;
pub mod messages;
pub mod models;
pub mod pagination;
mod request;
pub mod response;
pub mod retry;
mod sse;
pub mod stream;
mod transport;

pub use accumulate::MessageAccumulator;
pub use batches::BatchResults;
pub use client::{
    Client, ClientBuilder, DEFAULT_BASE_URL, DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT,
};
pub use error::{ApiError, Error};
pub use pagination::ListParams;
pub use rampart_crypto::Secret;
pub use response::Response;
pub use stream::MessageStream;

/// The wire types: requests ([`types::MessageCreateParams`] and its parts), responses
/// ([`types::Message`]), stream events ([`types::stream`]), models and batches.
pub mod types {
    pub use rampart_api::batches::*;
    pub use rampart_api::error::{ErrorBody, ErrorEnvelope, ErrorType};
    pub use rampart_api::messages::*;
    pub use rampart_api::models::*;
    pub use rampart_api::params::*;
    pub use rampart_api::stream;
}

#[cfg(test)]
mod tests;
