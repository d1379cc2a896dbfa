//! An offline, deterministic simulator of Anthropic's Claude API, for Rampart's tests and benchmarks.
//!
//! [`serve`] answers the Messages API (`POST /v1/messages`, JSON and SSE), `count_tokens`, the
//! models endpoints and the six message-batch endpoints, with the API's validation, error envelope,
//! headers and prompt-cache accounting. Replies are derived from the request, so the same request
//! always gets the same text. A `/_sim/` control plane injects faults and exposes counters and a
//! log of received requests. See `README.md` in the crate for a walk-through.
//!
//! # Replies
//!
//! The reply seed is a SHA-256 of the canonical JSON (sorted keys) of `model`, `system`,
//! `messages`, `tools`, `tool_choice` and `thinking`. `max_tokens`, `stream`, `stop_sequences`,
//! sampling parameters and `metadata` are not part of it, so a capped or streamed reply is a prefix
//! of (or identical to) the uncapped JSON one. The "last user text" is the text of the last `user`
//! message (its string content, or its `text` blocks joined by `\n`; `tool_result` contents are not
//! included). Rules, in order:
//!
//! 1. **Thinking.** `thinking: {type: "enabled" | "adaptive"}` puts a `thinking` block first:
//!    15–60 words (capped by `budget_tokens` and `max_tokens`), with a deterministic base64
//!    `signature`. `display: "omitted"` sends empty thinking text with the signature. Streamed as
//!    `thinking_delta`s, then one `signature_delta` just before its `content_block_stop`.
//! 2. **Tool calls.** Only custom tools from `tools` are called, once, with `stop_reason: "tool_use"`:
//!    * `tool_choice {type:"tool", name}` calls that tool;
//!    * `{type:"any"}` calls the first tool whose name appears in the last user text, else the
//!      first tool;
//!    * `{type:"auto"}` (the default) calls the first tool (in `tools` order) whose exact name
//!      appears in the last user text as a whole word (case-sensitive; letters, digits, `_` and `-`
//!      are word characters), and never when the last user message contains a `tool_result`
//!      block, so agent loops end; it also yields to `echo:` (rule 3);
//!    * `{type:"none"}` never calls a tool.
//!
//!    The `input` has every `required` property of the tool's `input_schema`, recursively:
//!    `const`, then the first `enum` value, then the first `anyOf`/`oneOf`/`allOf` branch, then
//!    `default`; otherwise by type: string `"example <name>"` (padded to `minLength`), integer 1
//!    (or `minimum`), number 1.5 (clamped to the bounds), boolean `true`, array of `minItems`
//!    (at least 1) items, object with its required properties. Streamed as a `content_block_start`
//!    with `input: {}`, an `input_json_delta` of `""`, then 12-character fragments.
//! 3. **Echo.** If the last user text contains `echo: `, the reply text is exactly what follows it.
//! 4. **Generated text** otherwise: 20–120 words (the count and words chosen by the seed) from a
//!    fixed word list, in sentences. If the last user text contains `say <WORD>`, that word is
//!    inserted early in the text; so is every `stop_sequences` entry that appears in the last user
//!    text. This makes stop sequences easy to trigger: send `stop_sequences: ["BANANA"]` with the
//!    text `say BANANA`.
//!
//! Then **stop sequences**: the earliest occurrence of any `stop_sequences` entry in the text cuts
//! the text just before it, with `stop_reason: "stop_sequence"` and `stop_sequence` set. Then
//! **`max_tokens`**: output tokens beyond `max_tokens` are dropped with `stop_reason: "max_tokens"`
//! (`max_tokens: 0` gives empty content). Otherwise `stop_reason` is `"end_turn"`.
//!
//! **Output tokens**: text and thinking count one token per word piece (a word with its leading
//! whitespace and punctuation); a tool call counts `ceil(chars of its input JSON / 4)`.
//!
//! **Streaming**: with `tokens_per_sec` 0 and no stream fault, all events go out in one chunk (the
//! fastest baseline); otherwise each event is its own chunk, text and thinking deltas carry 3 word
//! pieces, and each delta waits `tokens / tokens_per_sec` seconds.
//!
//! # Token estimator
//!
//! [`estimate_input_tokens`] is used for `usage` and `count_tokens` alike (total input =
//! `input_tokens` + `cache_creation_input_tokens` + `cache_read_input_tokens`):
//!
//! * text: `ceil(chars / 4)` (Unicode scalar values);
//! * each message: 4, plus each content block: 3 + its content (string content: just its text);
//! * `system`: 3 + text for a string, 3 + text per block for an array;
//! * each tool: 8 + `ceil(chars of its compact JSON, without cache_control / 4)`;
//! * image: 1600; document: its text (plain-text source), nested blocks (content source), else 3000;
//! * `tool_use`: name + `ceil(input JSON chars / 4)`; `tool_result`: its string or nested blocks;
//!   `thinking` / `redacted_thinking`: their text; other blocks: `ceil(JSON chars / 4)`.
//!
//! # Prompt caching
//!
//! `cache_control: {type: "ephemeral", ttl?: "5m" | "1h"}` on tools, system blocks and message
//! content blocks marks breakpoints; a top-level `cache_control` adds one on the last cacheable
//! block. At most 4 (400 `A maximum of 4 blocks with cache_control may be provided. Found N.`),
//! and every `1h` breakpoint must precede every `5m` one (else 400). Prefixes (tools → system →
//! messages, `cache_control` removed) are hashed with the model and the presented credential, so
//! entries are scoped per key. The longest cached prefix at a breakpoint, or up to 20 blocks before
//! one, is read (`cache_read_input_tokens`); later breakpoints whose prefix reaches the model's
//! minimum (512 Opus 5; 2048 Sonnet 4.6 and Haiku 3.x; 4096 Haiku 4.5, Opus 4.5/4.6, Mythos
//! Preview; else 1024) are written: 1h writes up to the last 1h breakpoint, 5m writes from there
//! to the last breakpoint (`cache_creation.ephemeral_{1h,5m}_input_tokens`). `input_tokens` is the
//! rest. Entries expire on `tokio::time` and are refreshed on a hit. Batch items are not cached.
//!
//! # Faults and the control plane
//!
//! `/_sim/` routes need no API key and are not counted or logged.
//!
//! * `POST /_sim/faults` with `{"kind", "count"?: 1, "model"?, "path"?: "messages",
//!   "status"?: 529, "error_type"?, "message"?, "retry_after"?, "retry_after_ms"?, "delay_ms"?: 0,
//!   "after_events"?: 2}` → `{"id", "kind", "remaining"}`. `path` is one of `messages`,
//!   `count_tokens`, `models`, `batches`; `model` matches the body's `model` exactly. Each matching
//!   API request (after auth and version checks pass) consumes one count of the oldest matching
//!   fault. `error_type` defaults from `status`; `message` from the type (`Overloaded` for 529);
//!   `retry_after` defaults to 1 for 429, 529 and `exhausted`; `retry_after_ms` also sends
//!   `retry-after-ms`. Kinds:
//!   * `status`: that status with the error envelope (and `retry-after`);
//!   * `reset`: the connection is closed without a response (HTTP/2: the stream is reset);
//!   * `stall_headers`: sleep `delay_ms`, then answer normally;
//!   * `stall_stream`: after `after_events` SSE events, pause `delay_ms`, then continue
//!     (non-streamed: the body is sent `delay_ms` after the headers);
//!   * `error_event`: after `after_events` events, send `event: error` with the envelope's `error`
//!     (default `overloaded_error` / `Overloaded`) and end the stream (non-streamed: answered as a
//!     `status` fault);
//!   * `slow`: each SSE event (or the JSON body) is delayed by `delay_ms`;
//!   * `abort_stream`: after `after_events` events the body is aborted, so the client sees a
//!     truncated chunked response (non-streamed: half the JSON body, then the abort);
//!   * `exhausted`: answered normally, but with `anthropic-ratelimit-requests-remaining: 0` and
//!     `anthropic-ratelimit-requests-reset` `retry_after` seconds from now.
//! * `GET /_sim/faults` lists the remaining faults; `DELETE /_sim/faults` clears them.
//! * `GET /_sim/counters` → `{"total", "routes": {"messages", "count_tokens", "models", "batches"},
//!   "models": {"<model>": n}}`, counting every API request that arrived, failed ones included.
//! * `POST /_sim/reset` zeroes counters and clears faults, the prompt cache, batches and the log.
//! * `GET /_sim/requests?limit=N` (default 20, max 200) → the last N API requests, oldest first:
//!   `[{"method", "path", "query", "headers": {lower-case name: value}, "model"}]`.
//!
//! # Batches
//!
//! Every item is validated and answered at creation (invalid params and unknown models become
//! `errored` results with the full envelope; answers have `usage.service_tier: "batch"`); the batch
//! reports `in_progress` until `batch_processing_ms` after creation, then `ended`. A cancel makes
//! it `canceling` and ends it within a tenth of the processing time; items that would have
//! finished before the cancel keep their result, the rest are `canceled`. Results are JSONL
//! (`application/x-jsonl`), in request order.

mod batches;
mod cache;
mod canon;
mod control;
mod engine;
mod error;
mod faults;
mod generate;
mod ids;
mod models;
mod respond;
mod router;
mod server;
mod sse;
mod state;
mod tokens;
mod validate;

use std::future::Future;

pub use models::default_catalogue;
pub use tokens::estimate_input_tokens;

/// Simulator settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Delay added before the response headers of every API request, in ms (0 = none).
    pub latency_ms: u64,
    /// SSE pacing of output tokens per second; 0.0 = unpaced (zero-latency mode).
    pub tokens_per_sec: f64,
    /// Time from creation until a batch ends, in ms (default 2000).
    pub batch_processing_ms: u64,
    /// If set, the only accepted key (`x-api-key` or `Authorization: Bearer`); if `None`, any
    /// non-empty key is accepted.
    pub api_key: Option<String>,
    /// The model catalogue, newest first (default [`default_catalogue`]).
    pub models: Vec<rampart_api::models::ModelInfo>,
    /// Base of batch `results_url`s (default `http://<listener address>`).
    pub public_base_url: Option<String>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            tokens_per_sec: 0.0,
            batch_processing_ms: 2000,
            api_key: None,
            models: default_catalogue(),
            public_base_url: None,
        }
    }
}

/// Serves the simulated API on `listener` until `shutdown` completes, then stops accepting and
/// waits for in-flight connections to finish. Speaks HTTP/1.1 (keep-alive) and h2c.
///
/// # Errors
/// Only if the listener's local address cannot be read; accept errors are retried.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cfg: SimConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    server::serve(listener, cfg, shutdown).await
}
