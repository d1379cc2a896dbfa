//! Anthropic Messages API wire types, in one place.
//!
//! Everything that crosses the wire between a client, Rampart and the upstream API is described here:
//! errors ([`error`]), messages and usage ([`messages`]), SSE stream events ([`stream`]), the model
//! catalogue ([`models`]) and message batches ([`batches`]). The crate depends on serde only, so the
//! simulator, the gateway and the Rust client share one definition of the protocol.

pub mod batches;
pub mod error;
pub mod messages;
pub mod models;
pub mod params;
pub mod prompt_cache;
pub mod stream;
pub mod tokens;

pub use error::{ErrorBody, ErrorEnvelope, ErrorType};
pub use messages::{CacheCreation, ContentBlock, Message, StopReason, Usage};
pub use params::{ContentBlockParam, MessageCreateParams, MessageParam, Role};

/// The only `anthropic-version` value the API accepts today.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";
