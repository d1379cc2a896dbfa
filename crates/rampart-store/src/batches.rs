//! Message batches and the durable local queue: what [`BatchRepository`] stores and answers.
//!
//! - A batch is one `message_batches` row, whichever the execution mode (`local`: its items are
//!   `batch_items` rows run by Rampart's own workers; `upstream`: forwarded to the upstream batch
//!   API, the row mirrors it). Its counts are kept in the row and change only in the transaction
//!   that settles an item; the transaction that makes it `ended` also sets `ended_at`.
//! - Items are claimed with leases ([`BatchRepository::claim_items`]): `attempts` is incremented
//!   at claim time, and a claim is the fence for its completion (the completion names the attempt
//!   it ran; a completion whose attempt is no longer current changes nothing). A `running` item
//!   whose lease passed is claimable again and is then flagged `maybe_duplicate`: its upstream
//!   call may have run, but only one completion can ever be recorded, so it is charged once.
//! - An item's completion, its usage record and its batch's counts are written in one
//!   transaction ([`BatchRepository::complete_items`]); the usage record's id is derived from
//!   the batch id and the item, so it can never be inserted twice.
//! - Items that ran out of attempts on retryable failures are `errored` and kept in
//!   `batch_dead_letters` with their last error; [`BatchRepository::replay_dead_letter`] queues
//!   the item again.
//! - An upstream-mode batch keeps the model each of its items asked ([`ItemModels`],
//!   `upstream_item_models`), written in the transaction that inserts its row and deleted in the
//!   one that ends it, so the usage records of its results name the model asked.

use std::collections::HashMap;

use async_trait::async_trait;
use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::Result;
use crate::usage::UsageRecord;

/// How a batch runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchMode {
    /// Rampart's own queue and upstream pool.
    Local,
    /// The upstream's batch API.
    Upstream,
}

impl BatchMode {
    /// The stored name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Upstream => "upstream",
        }
    }

    /// From the stored name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "local" => Some(Self::Local),
            "upstream" => Some(Self::Upstream),
            _ => None,
        }
    }
}

/// A batch as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The public `msgbatch_…` id.
    pub id: String,
    /// Who may see it: `team:<uuid>`, `key:<uuid>` or `cfg:<key label>`.
    pub owner: String,
    /// The creating key's team.
    pub team_id: Option<Uuid>,
    /// The creating store key.
    pub key_id: Option<Uuid>,
    /// The creating key's user.
    pub user_id: Option<Uuid>,
    /// The creating key's label.
    pub key_label: Option<String>,
    /// Execution mode.
    pub mode: BatchMode,
    /// `in_progress`, `canceling` or `ended`.
    pub processing_status: String,
    /// Number of requests.
    pub request_count: u64,
    /// Finished with a message.
    pub succeeded: u64,
    /// Finished with an error.
    pub errored: u64,
    /// Canceled before running.
    pub canceled: u64,
    /// Expired before running.
    pub expired: u64,
    /// The worst-case cost reserved against budgets at submission (micro-dollars).
    pub reserved_micro_usd: u64,
    /// Created.
    pub created_at: OffsetDateTime,
    /// When unfinished items expire.
    pub expires_at: OffsetDateTime,
    /// When processing ended.
    pub ended_at: Option<OffsetDateTime>,
    /// When a cancel was requested.
    pub cancel_initiated_at: Option<OffsetDateTime>,
    /// When the results were removed (retention).
    pub archived_at: Option<OffsetDateTime>,
    /// Results are kept until then.
    pub results_until: OffsetDateTime,
}

impl Batch {
    /// Items not finished yet.
    #[must_use]
    pub fn processing(&self) -> u64 {
        self.request_count
            .saturating_sub(self.succeeded + self.errored + self.canceled + self.expired)
    }
}

/// One request of a new batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBatchItem {
    /// The caller's id, unique in the batch.
    pub custom_id: String,
    /// The Messages params, as JSON text.
    pub params: String,
    /// Its worst-case cost (micro-dollars), given back to the budget when it settles.
    pub worst_micro_usd: u64,
}

/// Longest model name kept for an upstream-mode item (characters), as long as a usage record's.
pub const MAX_MODEL_CHARS: usize = 200;

/// The model each item of an upstream-mode batch asked (`params.model` as written; `None`: none,
/// or not a string), kept from creation until the batch ends so its usage records can name it.
///
/// Compact for the usual batch of one model: the model most items asked is kept once, and only
/// the items that asked another are kept one by one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemModels {
    /// The model most items asked.
    common: Option<String>,
    /// `custom_id` → the model of an item that asked another than `common`.
    others: HashMap<String, Option<String>>,
}

impl ItemModels {
    /// From each item's `(custom_id, model asked)` (`custom_id`s are unique in a batch). Names
    /// longer than [`MAX_MODEL_CHARS`] cannot be stored.
    #[must_use]
    pub fn from_items<'a>(items: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) -> Self {
        let items: Vec<(&str, Option<&str>)> = items.into_iter().collect();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for m in items.iter().filter_map(|(_, m)| *m) {
            *counts.entry(m).or_default() += 1;
        }
        // Ties go to the smallest name, so the same items are always kept the same way.
        let common = counts
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(a.0)))
            .map(|(m, _)| m);
        let others = items
            .into_iter()
            .filter(|(_, m)| *m != common)
            .map(|(id, m)| (id.to_owned(), m.map(str::to_owned)))
            .collect();
        Self {
            common: common.map(str::to_owned),
            others,
        }
    }

    /// The model the item `custom_id` asked, when one was kept.
    #[must_use]
    pub fn asked(&self, custom_id: &str) -> Option<&str> {
        match self.others.get(custom_id) {
            Some(m) => m.as_deref(),
            None => self.common.as_deref(),
        }
    }

    /// Whether nothing is kept (local mode, a batch whose items named no model, or one created
    /// before the models were kept).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.common.is_none() && self.others.is_empty()
    }

    /// As stored: `(custom_id, model)` rows, the common model under the `custom_id` `""` (never
    /// a valid one).
    pub(crate) fn rows(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.common
            .as_deref()
            .map(|m| ("", Some(m)))
            .into_iter()
            .chain(
                self.others
                    .iter()
                    .map(|(id, m)| (id.as_str(), m.as_deref())),
            )
    }

    /// From stored rows (see [`Self::rows`]).
    pub(crate) fn from_rows(rows: impl IntoIterator<Item = (String, Option<String>)>) -> Self {
        let mut out = Self::default();
        for (id, m) in rows {
            if id.is_empty() {
                out.common = m;
            } else {
                out.others.insert(id, m);
            }
        }
        out
    }
}

/// A new batch; `items` is empty in upstream mode, `item_models` in local mode.
#[derive(Debug, Clone)]
pub struct NewBatch {
    /// The public id.
    pub id: String,
    /// See [`Batch::owner`].
    pub owner: String,
    /// Team of the creating key.
    pub team_id: Option<Uuid>,
    /// The creating store key.
    pub key_id: Option<Uuid>,
    /// Its user.
    pub user_id: Option<Uuid>,
    /// Its label.
    pub key_label: Option<String>,
    /// Execution mode.
    pub mode: BatchMode,
    /// Number of requests (the items' count in local mode).
    pub request_count: u64,
    /// Reserved worst-case cost.
    pub reserved_micro_usd: u64,
    /// Created.
    pub created_at: OffsetDateTime,
    /// Expiry.
    pub expires_at: OffsetDateTime,
    /// End of result retention.
    pub results_until: OffsetDateTime,
    /// The requests (local mode).
    pub items: Vec<NewBatchItem>,
    /// The model each item asked (upstream mode), stored with the batch's row.
    pub item_models: ItemModels,
}

/// A page of batches, newest first.
#[derive(Debug, Clone)]
pub struct BatchPage {
    /// The batches.
    pub batches: Vec<Batch>,
    /// Whether more exist beyond this page in the direction asked.
    pub has_more: bool,
}

/// Where a page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    /// The newest.
    Start,
    /// Older than this id.
    After(String),
    /// Newer than this id.
    Before(String),
}

/// One result line as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemResult {
    /// Position in the batch.
    pub idx: u64,
    /// The caller's id.
    pub custom_id: String,
    /// The result object's JSON (`{"type":"succeeded",…}`), or `None` while unfinished.
    pub result: Option<String>,
}

/// How the local queue claims.
#[derive(Debug, Clone)]
pub struct ClaimOptions {
    /// At most this many items.
    pub limit: u32,
    /// At most this many running items per team (across instances; live leases).
    pub per_team: u32,
    /// Lease length.
    pub lease: time::Duration,
    /// Now.
    pub now: OffsetDateTime,
    /// Round-robin position: teams after this one are served first.
    pub after_team: Option<String>,
    /// Batches none of whose items to claim now (the claimer's own reasons: their key has no
    /// room under its per-minute limits for a while).
    pub skip_batches: Vec<String>,
}

/// A claimed item, with what its batch says about the caller.
#[derive(Debug, Clone)]
pub struct ClaimedItem {
    /// Batch.
    pub batch_id: String,
    /// Position.
    pub idx: u64,
    /// The caller's id.
    pub custom_id: String,
    /// Fair-sharing group (`''` for no team).
    pub team_key: String,
    /// The Messages params JSON.
    pub params: String,
    /// This claim's attempt number (1 for the first): the fence for its completion.
    pub attempt: u32,
    /// An earlier claim's lease ran out: its upstream call may have run.
    pub maybe_duplicate: bool,
    /// Worst-case cost reserved for it.
    pub worst_micro_usd: u64,
    /// How many times it was replayed from the dead letters (0: its first run).
    pub replays: u64,
    /// Batch owner's team.
    pub team_id: Option<Uuid>,
    /// Batch owner's key.
    pub key_id: Option<Uuid>,
    /// Batch owner's user.
    pub user_id: Option<Uuid>,
    /// Batch owner's key label.
    pub key_label: Option<String>,
}

/// The end of one claimed attempt.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Done with a message: the result object's JSON.
    Succeeded(String),
    /// Done with an error that retrying cannot fix: the result object's JSON.
    Errored(String),
    /// A retryable failure: queue it again after `not_before`.
    Retry {
        /// Earliest next claim.
        not_before: OffsetDateTime,
        /// The error, for the dead-letter table should it be the last.
        error: String,
    },
    /// Not run: the batch's key or team has no room under its per-minute limits until
    /// `not_before`. Queued again as it was, the attempt it was claimed with given back (its
    /// next claim carries the same attempt number; its last error is kept).
    Deferred {
        /// Earliest next claim.
        not_before: OffsetDateTime,
    },
    /// A retryable failure, and no attempt left: `errored`, and a dead letter.
    DeadLetter {
        /// The result object's JSON.
        result: String,
        /// The last upstream status, if any.
        status: Option<u16>,
        /// The last error (the envelope JSON).
        error: String,
    },
}

/// A finished attempt, for [`BatchRepository::complete_items`].
#[derive(Debug, Clone)]
pub struct Completion {
    /// Batch.
    pub batch_id: String,
    /// Position.
    pub idx: u64,
    /// The attempt that ran (the fence).
    pub attempt: u32,
    /// How it ended.
    pub outcome: Outcome,
    /// The item's usage record (succeeded and errored items), written in the same transaction.
    pub usage: Option<UsageRecord>,
}

/// What [`BatchRepository::complete_items`] did.
#[derive(Debug, Clone, Default)]
pub struct Completed {
    /// Per completion, in order: whether it was applied (false: its claim was no longer current).
    pub applied: Vec<bool>,
    /// Batches that ended in this transaction.
    pub ended: Vec<String>,
    /// Usage records inserted.
    pub usage_inserted: u64,
}

/// A dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// Its id.
    pub id: Uuid,
    /// The batch.
    pub batch_id: String,
    /// The item's position.
    pub idx: u64,
    /// The item's `custom_id`.
    pub custom_id: String,
    /// The batch's team.
    pub team_id: Option<Uuid>,
    /// The batch's key.
    pub key_id: Option<Uuid>,
    /// Attempts made.
    pub attempts: u32,
    /// The last upstream status, if any.
    pub last_status: Option<u16>,
    /// The last error (an error envelope's JSON).
    pub last_error: String,
    /// When it was dead-lettered.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it was last replayed.
    #[serde(with = "time::serde::rfc3339::option")]
    pub replayed_at: Option<OffsetDateTime>,
    /// How often it was replayed.
    pub replay_count: u32,
}

/// A filter and page of dead letters (oldest first).
#[derive(Debug, Clone, Default)]
pub struct DeadLetterQuery {
    /// Only this batch's.
    pub batch_id: Option<String>,
    /// Only this team's.
    pub team_id: Option<Uuid>,
    /// After this id (in the order of the listing).
    pub after: Option<Uuid>,
    /// Page size.
    pub limit: u32,
}

/// What an upstream-mode batch looks like upstream now.
#[derive(Debug, Clone)]
pub struct UpstreamState {
    /// `in_progress`, `canceling` or `ended`.
    pub processing_status: String,
    /// Counts as the upstream reports them.
    pub succeeded: u64,
    /// Errored.
    pub errored: u64,
    /// Canceled.
    pub canceled: u64,
    /// Expired.
    pub expired: u64,
    /// When the cancel was requested.
    pub cancel_initiated_at: Option<OffsetDateTime>,
}

/// The batches' persistence, on both engines.
#[async_trait]
pub trait BatchRepository: Send + Sync {
    /// Store a new batch, its items and its items' models in one transaction.
    ///
    /// # Errors
    /// [`crate::StoreError::Conflict`] if the id exists or two items share a `custom_id`.
    async fn create_batch(&self, batch: &NewBatch) -> Result<Batch>;
    /// A batch by id.
    ///
    /// # Errors
    /// [`crate::StoreError::NotFound`].
    async fn get_batch(&self, id: &str) -> Result<Batch>;
    /// A page of `owner`'s batches, newest first.
    ///
    /// # Errors
    /// [`crate::StoreError::NotFound`] for a cursor naming no batch of `owner`.
    async fn list_batches(&self, owner: &str, cursor: &Cursor, limit: u32) -> Result<BatchPage>;
    /// Request a cancel: `in_progress` becomes `canceling`; in local mode unstarted items are
    /// `canceled` at once (and the batch ends when nothing is left running).
    ///
    /// # Errors
    /// [`crate::StoreError::NotFound`].
    async fn cancel_batch(&self, id: &str, now: OffsetDateTime) -> Result<Batch>;
    /// Delete an ended batch and its items.
    ///
    /// # Errors
    /// [`crate::StoreError::NotFound`], [`crate::StoreError::Invalid`] if it has not ended.
    async fn delete_batch(&self, id: &str) -> Result<()>;
    /// Result lines of a local batch from position `from`, at most `limit`, in item order.
    async fn batch_results(&self, id: &str, from: u64, limit: u32) -> Result<Vec<ItemResult>>;

    /// Claim ready items (queued and due, or running with a lapsed lease), fairly across teams
    /// and within each team's concurrency limit. See the module docs.
    async fn claim_items(&self, options: &ClaimOptions) -> Result<Vec<ClaimedItem>>;
    /// Extend the leases of claims still running (`(batch, idx, attempt)`); returns how many.
    async fn extend_leases(
        &self,
        claims: &[(String, u64, u32)],
        until: OffsetDateTime,
    ) -> Result<u64>;
    /// Settle finished attempts, their usage records and their batches' counts, in one
    /// transaction. See [`Completed`].
    async fn complete_items(&self, done: &[Completion], now: OffsetDateTime) -> Result<Completed>;
    /// Expire unfinished items of local batches past their expiry; returns the batches ended.
    async fn expire_batches(&self, now: OffsetDateTime) -> Result<Vec<String>>;
    /// Remove the items (results) of batches whose retention passed; returns how many batches.
    async fn archive_batches(&self, now: OffsetDateTime) -> Result<u64>;

    /// Upstream-mode batches not ended yet (oldest sync first), at most `limit`.
    async fn open_upstream_batches(&self, limit: u32) -> Result<Vec<Batch>>;
    /// Mirror what the upstream reports about a batch that has not ended.
    async fn sync_upstream_batch(
        &self,
        id: &str,
        state: &UpstreamState,
        now: OffsetDateTime,
    ) -> Result<()>;
    /// The models an upstream-mode batch's items asked, as kept at creation (empty once it has
    /// ended, or for a batch created before they were kept).
    async fn item_models(&self, id: &str) -> Result<ItemModels>;
    /// End an upstream-mode batch: its final counts, the usage records of its items, and
    /// `ended_at`, in one transaction (records already stored are skipped; its items' models,
    /// no longer needed, are deleted). Returns whether it ended now (false if it had already).
    async fn end_upstream_batch(
        &self,
        id: &str,
        state: &UpstreamState,
        usage: &[UsageRecord],
        now: OffsetDateTime,
    ) -> Result<bool>;

    /// A page of dead letters.
    async fn list_dead_letters(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>>;
    /// A dead letter by id.
    ///
    /// # Errors
    /// [`crate::StoreError::NotFound`].
    async fn get_dead_letter(&self, id: Uuid) -> Result<DeadLetter>;
    /// Queue a dead letter's item again (attempts start over); its batch keeps counting it as
    /// errored until it finishes again. `audit`, when given, is appended in the same transaction.
    ///
    /// # Errors
    /// [`crate::StoreError::NotFound`] (also when the batch or item is gone),
    /// [`crate::StoreError::Invalid`] when the item is not `errored`.
    async fn replay_dead_letter(
        &self,
        id: Uuid,
        now: OffsetDateTime,
        audit: Option<&crate::model::NewAuditEvent>,
    ) -> Result<DeadLetter>;
}

/// The usage-record id of a batch item: derived from the batch id and the item position, so one
/// run of an item can never have two records.
#[must_use]
pub fn item_usage_id(batch_id: &str, idx: u64) -> Uuid {
    item_run_usage_id(batch_id, idx, 0)
}

/// [`item_usage_id`] of the item's run after `replays` replays from the dead letters: a replay
/// is a new upstream call with a record of its own (the first run's id is unchanged).
#[must_use]
pub fn item_run_usage_id(batch_id: &str, idx: u64, replays: u64) -> Uuid {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"rampart-batch-item\0");
    h.update(batch_id.as_bytes());
    h.update(b"\0");
    h.update(idx.to_be_bytes());
    if replays > 0 {
        h.update(b"\0replay\0");
        h.update(replays.to_be_bytes());
    }
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(items: &[(&'static str, Option<&'static str>)]) -> ItemModels {
        ItemModels::from_items(items.iter().copied())
    }

    #[test]
    fn a_batch_of_one_model_keeps_it_once() {
        let one = kept(&[("a", Some("m")), ("b", Some("m")), ("c", Some("m"))]);
        assert_eq!(one.rows().collect::<Vec<_>>(), [("", Some("m"))]);
        assert_eq!((one.asked("a"), one.asked("c")), (Some("m"), Some("m")));
    }

    #[test]
    fn only_the_items_asking_another_model_are_kept_one_by_one() {
        let mixed = kept(&[
            ("a", Some("m")),
            ("b", Some("n")),
            ("c", None),
            ("d", Some("m")),
        ]);
        let mut rows: Vec<_> = mixed.rows().collect();
        rows.sort_unstable();
        assert_eq!(rows, [("", Some("m")), ("b", Some("n")), ("c", None)]);
        let asked: Vec<_> = ["a", "b", "c", "d"].map(|id| mixed.asked(id)).into();
        assert_eq!(asked, [Some("m"), Some("n"), None, Some("m")]);
        assert_eq!(
            ItemModels::from_rows(
                rows.iter()
                    .map(|(id, m)| { ((*id).to_owned(), m.map(str::to_owned)) })
            ),
            mixed
        );
        // A tie goes to the smallest name, whatever the order.
        let tied = kept(&[("x", Some("z")), ("y", Some("b"))]);
        assert_eq!(tied.asked("unknown"), Some("b"));
        // Nothing named: nothing kept.
        assert!(kept(&[("a", None)]).is_empty());
    }
}
