//! The Rampart gateway: a drop-in proxy for Anthropic's API.
//!
//! - [`config`]: layered configuration and validation;
//! - [`auth`]: who is calling (constant-time key check behind the [`auth::Authenticator`] trait);
//! - [`keydir`]: store keys served from memory, with refusal reasons and batched `last_used_at`;
//! - [`denials`]: audit rows for refused key uses, off the hot path and rate-limited;
//! - [`peek`]: one-pass body check that borrows only `model`, `stream` and `max_tokens`;
//! - [`proxy`]: the forwarding engine and per-request accounting;
//! - [`batches`]: message batches with a store (upstream and local modes, the durable queue);
//! - [`admission`]: rate limits and budgets around the upstream call (reserve, then settle;
//!   [`limits_config`] configures where their state lives);
//! - [`exchange`]: the upstream call — pick, attempt, classify, retry, fall back, hold back a stream;
//! - [`upstream_pool`], [`breaker`], [`classify`], [`retry`], [`routing`], [`window`]: its parts
//!   ([`resilience_config`] configures them);
//! - [`upstream_key`]: the upstream credential, fixed or from the store's encrypted credentials;
//! - [`sse`]: the bounded SSE usage scanner;
//! - [`server`]: router, pipeline order and the accept loop;
//! - [`store_plane`]: the store-backed background tasks (reloads, `last_used_at`, denial audit);
//! - [`telemetry`]: metrics and the access log;
//! - [`logging`]: batched log output shared by every subcommand.

pub mod accounting;
pub mod admission;
pub mod auth;
mod balance;
pub mod batch_urls;
pub mod batches;
pub mod breaker;
pub mod classify;
pub mod config;
pub mod denials;
pub mod error;
pub mod exchange;
#[cfg(test)]
mod json_text;
pub mod keydir;
pub mod limits_config;
pub mod logging;
pub mod peek;
pub mod proxy;
pub mod resilience_config;
pub mod response_cache;
pub mod retry;
pub mod routes;
pub mod routing;
pub mod secret;
pub mod server;
pub mod sse;
pub mod store_plane;
pub mod telemetry;
pub mod upstream;
pub mod upstream_key;
pub mod upstream_pool;
pub mod window;

pub use config::{Settings, Sources};
pub use secret::Secret;
pub use server::Gateway;
