//! Rampart's two caching levers.
//!
//! - **Response cache** ([`key`], [`sse`], [`store`]): a complete, successful answer is kept under
//!   a key that hashes the tenant and every request field that can change the answer; the same
//!   request from the same team is then answered from memory (or Redis), as JSON or as a replayed
//!   SSE stream, with no upstream call.
//! - **Prompt-cache breakpoints** ([`breakpoints`]): `cache_control` marks added to requests that
//!   carry none, so Anthropic's own prompt cache serves repeated prefixes at a tenth of the price.

pub mod breakpoints;
pub mod key;
pub mod sse;
pub mod store;

pub use key::{CacheKey, cache_key};
pub use store::{CachedResponse, MemoryStore, ResponseStore};
