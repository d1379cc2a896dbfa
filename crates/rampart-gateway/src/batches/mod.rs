//! Message batches with a store: `/v1/messages/batches*` served by Rampart, scoped to the
//! caller's team (or key), in one of two execution modes.
//!
//! - **upstream** (the default): creation is forwarded to the upstream batch API (its 50 %
//!   discount); Rampart keeps a `message_batches` row for scoping and lists from it, forwards
//!   get/cancel/delete/results after checking ownership, and [`upstream::Syncer`] polls open
//!   batches; when one ends, every result line is priced at batch rates and written to the
//!   usage ledger with the batch's key, team and user, in the transaction that ends it.
//! - **local**: the items go into the durable queue (`batch_items`) and [`runner::Runner`] runs
//!   them through Rampart's own upstream pool (retries, breakers, routing), with leases, per-team
//!   concurrency and fair sharing between teams, retries with backoff for retryable failures and
//!   a dead-letter table for items that exhaust them. Each item's completion, its usage record
//!   and its batch's counts are one transaction.
//!
//! The mode is the `x-rampart-batch-mode` request header (`local` or `upstream`), else the
//! team's entry in `batches.team_modes`, else `batches.mode`. Budgets: the worst-case cost of
//! every item is reserved at submission (402 when it cannot be afforded) and settled per item
//! ([`budget`]).
//!
//! | module | owns |
//! |---|---|
//! | [`api`] | the six endpoints, wire-compatible with Anthropic's |
//! | [`runner`] | the local queue's workers and sweeper (expiry, retention) |
//! | [`upstream`] | the upstream mode's poller and result ingestion |
//! | [`budget`] | reservations per batch, settled per item |

pub mod api;
pub mod budget;
pub mod pacing;
pub mod runner;
pub mod upstream;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rampart_store::Store;
use rampart_store::batches::{Batch, BatchMode};
use serde::Deserialize;
use uuid::Uuid;

/// `[batches]` as written in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchesConfig {
    /// Default mode: `upstream` or `local`.
    pub mode: String,
    /// Per-team modes: team id → `upstream` | `local`.
    pub team_modes: BTreeMap<String, String>,
    /// Local: items in flight per instance. Default 64.
    pub workers: u32,
    /// Local: running items per team, across instances. Default 16.
    pub team_concurrency: u32,
    /// Local: attempts per item for retryable failures. Default 4.
    pub max_attempts: u32,
    /// Local: first retry delay (doubles per attempt, with jitter). Default 1000 ms.
    pub backoff_base_ms: u64,
    /// Local: longest retry delay. Default 60000 ms.
    pub backoff_max_ms: u64,
    /// Local: claim lease; a crashed instance's items are claimable again after it. Default 60 s.
    pub lease_secs: u64,
    /// Unfinished items expire this long after creation. Default 24 h.
    pub expiry_hours: u64,
    /// Results are kept this long after creation. Default 29 days.
    pub retention_days: u64,
    /// Upstream mode: how often open batches are polled. Default 5000 ms.
    pub poll_interval_ms: u64,
    /// Local: how often the queue looks for ready items when idle. Default 200 ms.
    pub claim_interval_ms: u64,
    /// Most requests in one batch. Default 100000.
    pub max_requests: u64,
}

impl Default for BatchesConfig {
    fn default() -> Self {
        Self {
            mode: "upstream".to_owned(),
            team_modes: BTreeMap::new(),
            workers: 64,
            team_concurrency: 16,
            max_attempts: 4,
            backoff_base_ms: 1000,
            backoff_max_ms: 60_000,
            lease_secs: 60,
            expiry_hours: 24,
            retention_days: 29,
            poll_interval_ms: 5000,
            claim_interval_ms: 200,
            max_requests: 100_000,
        }
    }
}

/// Validated `[batches]`.
#[derive(Debug, Clone)]
pub struct BatchSettings {
    /// Default mode.
    pub mode: BatchMode,
    /// Per-team modes.
    pub team_modes: BTreeMap<Uuid, BatchMode>,
    /// Items in flight per instance.
    pub workers: u32,
    /// Running items per team.
    pub team_concurrency: u32,
    /// Attempts per item.
    pub max_attempts: u32,
    /// First retry delay.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Claim lease.
    pub lease: Duration,
    /// Expiry after creation.
    pub expiry: Duration,
    /// Result retention after creation.
    pub retention: Duration,
    /// Upstream poll period.
    pub poll_interval: Duration,
    /// Idle claim period.
    pub claim_interval: Duration,
    /// Most requests per batch.
    pub max_requests: u64,
}

impl Default for BatchSettings {
    fn default() -> Self {
        let mut problems = Vec::new();
        BatchesConfig::default().settings(&mut problems)
    }
}

fn parse_mode(s: &str) -> Option<BatchMode> {
    BatchMode::parse(s)
}

impl BatchesConfig {
    /// Validate, adding every problem to `problems`.
    pub fn settings(&self, problems: &mut Vec<String>) -> BatchSettings {
        let mode = parse_mode(&self.mode).unwrap_or_else(|| {
            problems.push(format!(
                "batches.mode: `{}` is not `upstream` or `local`",
                self.mode
            ));
            BatchMode::Upstream
        });
        let mut team_modes = BTreeMap::new();
        for (team, m) in &self.team_modes {
            match (team.parse::<Uuid>(), parse_mode(m)) {
                (Ok(t), Some(m)) => {
                    team_modes.insert(t, m);
                }
                (Err(_), _) => problems.push(format!(
                    "batches.team_modes: `{team}` is not a team id (a UUID)"
                )),
                (_, None) => problems.push(format!(
                    "batches.team_modes.{team}: `{m}` is not `upstream` or `local`"
                )),
            }
        }
        let mut check = |name: &str, v: u64, lo: u64, hi: u64| {
            if !(lo..=hi).contains(&v) {
                problems.push(format!("batches.{name}: must be between {lo} and {hi}"));
            }
        };
        check("workers", u64::from(self.workers), 1, 10_000);
        check(
            "team_concurrency",
            u64::from(self.team_concurrency),
            1,
            10_000,
        );
        check("max_attempts", u64::from(self.max_attempts), 1, 100);
        check("backoff_base_ms", self.backoff_base_ms, 1, 3_600_000);
        check("backoff_max_ms", self.backoff_max_ms, 1, 86_400_000);
        check("lease_secs", self.lease_secs, 1, 86_400);
        check("expiry_hours", self.expiry_hours, 1, 24 * 365);
        check("retention_days", self.retention_days, 1, 3650);
        check("poll_interval_ms", self.poll_interval_ms, 10, 3_600_000);
        check("claim_interval_ms", self.claim_interval_ms, 1, 60_000);
        check("max_requests", self.max_requests, 1, 1_000_000);
        BatchSettings {
            mode,
            team_modes,
            workers: self.workers.max(1),
            team_concurrency: self.team_concurrency.max(1),
            max_attempts: self.max_attempts.max(1),
            backoff_base: Duration::from_millis(self.backoff_base_ms.max(1)),
            backoff_max: Duration::from_millis(self.backoff_max_ms.max(1)),
            lease: Duration::from_secs(self.lease_secs.max(1)),
            expiry: Duration::from_secs(self.expiry_hours.max(1) * 3600),
            retention: Duration::from_secs(self.retention_days.max(1) * 86_400),
            poll_interval: Duration::from_millis(self.poll_interval_ms.max(10)),
            claim_interval: Duration::from_millis(self.claim_interval_ms.max(1)),
            max_requests: self.max_requests.max(1),
        }
    }
}

/// What the batch endpoints, the runner and the syncer share (only with a store).
#[derive(Debug)]
pub struct Batches {
    /// The store.
    pub store: Store,
    /// `[batches]`.
    pub settings: BatchSettings,
    /// Budget reservations of open batches.
    pub budgets: budget::BatchBudgets,
    /// Local items under their key's per-minute limits.
    pub pacer: pacing::Pacer,
    /// Wakes the runner when a local batch arrives (no wait for the next claim tick).
    pub wake: tokio::sync::Notify,
}

impl Batches {
    /// The shared handle.
    #[must_use]
    pub fn new(
        store: Store,
        settings: BatchSettings,
        limits: Option<crate::admission::Limits>,
        directory: Option<Arc<crate::keydir::KeyDirectory>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            settings,
            pacer: pacing::Pacer::new(limits.clone(), directory.clone()),
            budgets: budget::BatchBudgets::new(limits, directory),
            wake: tokio::sync::Notify::new(),
        })
    }

    /// The mode of a new batch: the header, else the team's, else the default.
    #[must_use]
    pub fn mode_for(&self, header: Option<BatchMode>, team: Option<Uuid>) -> BatchMode {
        header
            .or_else(|| team.and_then(|t| self.settings.team_modes.get(&t).copied()))
            .unwrap_or(self.settings.mode)
    }
}

/// Who may see a batch made by `identity`: its team, else its store key, else its configured key.
#[must_use]
pub fn owner_of(identity: &crate::auth::Identity) -> String {
    match (identity.team_id, identity.key_id) {
        (Some(t), _) => format!("team:{t}"),
        (None, Some(k)) => format!("key:{k}"),
        (None, None) => format!("cfg:{}", identity.key_label),
    }
}

/// A fresh local batch id: `msgbatch_` and a time-ordered UUIDv7 in hex.
#[must_use]
pub fn new_batch_id() -> String {
    format!("msgbatch_{}", Uuid::now_v7().simple())
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The wire object of `b` (`results_url` on `base` once ended and not archived).
#[must_use]
pub fn batch_object(b: &Batch, base: Option<&str>) -> rampart_api::batches::MessageBatch {
    use rampart_api::batches::{MessageBatch, ProcessingStatus, RequestCounts};
    let status = match b.processing_status.as_str() {
        "ended" => ProcessingStatus::Ended,
        "canceling" => ProcessingStatus::Canceling,
        _ => ProcessingStatus::InProgress,
    };
    let ended = status == ProcessingStatus::Ended;
    // As the API reports it: everything counts as processing until the whole batch ends.
    let request_counts = if ended {
        RequestCounts {
            processing: 0,
            succeeded: b.succeeded,
            errored: b.errored,
            canceled: b.canceled,
            expired: b.expired,
        }
    } else {
        RequestCounts {
            processing: b.request_count,
            ..RequestCounts::default()
        }
    };
    MessageBatch {
        id: b.id.clone(),
        kind: "message_batch".to_owned(),
        processing_status: status,
        request_counts,
        created_at: rfc3339(b.created_at),
        expires_at: rfc3339(b.expires_at),
        ended_at: b.ended_at.map(rfc3339),
        cancel_initiated_at: b.cancel_initiated_at.map(rfc3339),
        archived_at: b.archived_at.map(rfc3339),
        results_url: (ended && b.archived_at.is_none()).then(|| {
            format!(
                "{}/v1/messages/batches/{}/results",
                base.unwrap_or(""),
                b.id
            )
        }),
    }
}

/// Batch metrics: `rampart_batch_items_total{outcome}`, `rampart_batch_items_in_flight`,
/// `rampart_batch_items_maybe_duplicate_total`, `rampart_batch_dead_letters_total`.
pub(crate) mod metrics {
    pub(crate) fn item(outcome: &'static str) {
        ::metrics::counter!("rampart_batch_items_total", "outcome" => outcome).increment(1);
    }

    pub(crate) fn in_flight(n: usize) {
        #[allow(clippy::cast_precision_loss, reason = "a gauge")]
        ::metrics::gauge!("rampart_batch_items_in_flight").set(n as f64);
    }

    pub(crate) fn maybe_duplicate() {
        ::metrics::counter!("rampart_batch_items_maybe_duplicate_total").increment(1);
    }
}
