//! The usage ledger's records and rollups: what [`UsageRepository`] stores and answers.
//!
//! Every proxied request ends in one [`UsageRecord`]. [`UsageRepository::insert_usage`] inserts a
//! batch idempotently (by [`UsageRecord::id`]) and, in the same transaction, adds the records it
//! actually inserted to the hourly and daily rollups, so a replayed batch changes nothing and
//! [`UsageRepository::usage_summary`] answers from the rollups without scanning raw rows.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};
use uuid::Uuid;

use crate::error::Result;

/// One proxied request, as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// The ledger's id for the request (UUIDv7), assigned once: the idempotency key.
    pub id: Uuid,
    /// When the request arrived (UTC, microseconds).
    #[serde(with = "time::serde::timestamp::microseconds")]
    pub at: OffsetDateTime,
    /// The request id returned to the client (`x-request-id`; may come from the client).
    pub request_id: String,
    /// The store key that called, if any.
    pub key_id: Option<Uuid>,
    /// The key's team, if any.
    pub team_id: Option<Uuid>,
    /// The key's user, if any.
    pub user_id: Option<Uuid>,
    /// The key's non-secret label (a store key's prefix, or a configured key's digest prefix).
    pub key_label: Option<String>,
    /// The route template, e.g. `/v1/messages`.
    pub endpoint: String,
    /// The `model` the client asked for.
    pub model_requested: Option<String>,
    /// The model that served the request (from the response).
    pub model_served: Option<String>,
    /// The HTTP status returned to the client (499 when the client went away first).
    pub status: u16,
    /// The error type, for errors Rampart produced or streams that ended in an `error` event.
    pub error_type: Option<String>,
    /// Uncached input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cache writes with the 5-minute TTL.
    pub cache_write_5m_tokens: u64,
    /// Cache writes with the 1-hour TTL.
    pub cache_write_1h_tokens: u64,
    /// Cache reads.
    pub cache_read_tokens: u64,
    /// The cost in micro-dollars.
    pub cost_micro_usd: u64,
    /// Whether the model had a price (else the default price was used).
    pub priced: bool,
    /// Time from the request's arrival to its end, in microseconds.
    pub latency_us: u64,
    /// Time until the upstream's response headers, when the request went upstream.
    pub upstream_latency_us: Option<u64>,
    /// Upstream attempts made (0 when the request never went upstream).
    pub upstream_attempts: u32,
    /// Whether the response was an SSE stream.
    pub streamed: bool,
    /// Whether the response came from Rampart's response cache.
    pub cache_hit: bool,
    /// Whether the client went away before the end of the response.
    pub client_aborted: bool,
    /// What Rampart's caching saved, in micro-dollars: a response-cache hit, the cost of the
    /// answer it replayed; prompt-cache breakpoints, the uncached price of the tokens read from
    /// the cache less the extra price of the writes (negative when a request only wrote).
    #[serde(default)]
    pub saved_micro_usd: i64,
}

/// Which dimensions [`UsageRepository::usage_summary`] groups by; none gives one total row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageGroupBy {
    /// Per key.
    pub key: bool,
    /// Per team.
    pub team: bool,
    /// Per model (the served model, else the requested one).
    pub model: bool,
    /// Per UTC day.
    pub day: bool,
}

/// A usage question: a time range, filters and a grouping.
///
/// The range is `[from, to)` widened to whole UTC hours (`from` rounded down, `to` rounded up),
/// the rollups' resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    /// Start of the range (inclusive).
    pub from: OffsetDateTime,
    /// End of the range (exclusive).
    pub to: OffsetDateTime,
    /// Only this key.
    pub key_id: Option<Uuid>,
    /// Only this team.
    pub team_id: Option<Uuid>,
    /// Only keys of this user.
    pub user_id: Option<Uuid>,
    /// Only this model.
    pub model: Option<String>,
    /// The grouping.
    pub group_by: UsageGroupBy,
}

/// Sums for one group of a [`UsageQuery`]; a dimension not grouped by is `None`, and so is an
/// absent key, team or model inside a grouped dimension.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UsageRow {
    /// The UTC day, when grouped by day.
    pub day: Option<Date>,
    /// The key, when grouped by key.
    pub key_id: Option<Uuid>,
    /// The team, when grouped by team.
    pub team_id: Option<Uuid>,
    /// The model, when grouped by model.
    pub model: Option<String>,
    /// Requests.
    pub requests: u64,
    /// Requests answered with a status of 400 or more.
    pub errors: u64,
    /// Uncached input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cache writes with the 5-minute TTL.
    pub cache_write_5m_tokens: u64,
    /// Cache writes with the 1-hour TTL.
    pub cache_write_1h_tokens: u64,
    /// Cache reads.
    pub cache_read_tokens: u64,
    /// Cost in micro-dollars.
    pub cost_micro_usd: u64,
    /// What Rampart's caching saved, in micro-dollars (see [`UsageRecord::saved_micro_usd`]).
    pub saved_micro_usd: i64,
}

/// The ledger's persistence, on both engines.
#[async_trait]
pub trait UsageRepository: Send + Sync + std::fmt::Debug {
    /// Insert `records` (any number; a record already stored, same id and time, is skipped) and
    /// add the inserted ones to the hourly and daily rollups, all in one transaction. Returns how
    /// many records were new.
    ///
    /// # Errors
    /// [`crate::StoreError::Backend`]; nothing is written then.
    async fn insert_usage(&self, records: &[UsageRecord]) -> Result<u64>;

    /// [`Self::insert_usage`] for records that are new by construction (handed to the ledger's
    /// writer in memory, never read back from a spool): no query for stored ids first. Should one
    /// be stored after all, or be in `records` twice, the insert fails on the key's uniqueness,
    /// nothing of it is kept, and the batch is inserted again as by [`Self::insert_usage`], so a
    /// record is never counted twice. Returns how many records were new.
    ///
    /// # Errors
    /// As [`Self::insert_usage`].
    async fn insert_new_usage(&self, records: &[UsageRecord]) -> Result<u64> {
        self.insert_usage(records).await
    }

    /// Sums from the rollups (never the raw rows), grouped as asked, ordered by the grouped
    /// dimensions.
    ///
    /// # Errors
    /// [`crate::StoreError::Invalid`] when `to` is not after `from`.
    async fn usage_summary(&self, query: &UsageQuery) -> Result<Vec<UsageRow>>;

    /// Raw records that arrived in `[from, to)`, oldest first, at most `limit` (capped at 10 000).
    async fn list_usage_records(
        &self,
        from: OffsetDateTime,
        to: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<UsageRecord>>;

    /// Delete at most `limit` raw records that arrived before `before` (oldest first); the
    /// rollups are kept. Returns how many were deleted.
    async fn purge_usage_records(&self, before: OffsetDateTime, limit: u32) -> Result<u64>;
}
