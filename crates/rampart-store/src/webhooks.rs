//! Webhooks on batch end: each team's webhook (URL, sealed signing secret, enabled flag) and the
//! record of every delivery attempt. [`WebhookRepository`] is what the admin API, the CLI and the
//! dispatcher in `rampart serve` use.
//!
//! Several instances may dispatch at once: [`WebhookRepository::due_webhooks`] lists ended
//! batches whose team has an enabled webhook and that have not been delivered, and
//! [`WebhookRepository::claim_webhook_attempt`] inserts the attempt's row, unique per
//! `(team, batch, attempt)`, so exactly one instance sends each attempt. While an attempt runs its
//! `next_attempt_at` is the lease; an instance that dies mid-attempt leaves the next attempt due
//! when the lease passes.

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::batches::Batch;
use crate::error::Result;
use crate::model::NewAuditEvent;

/// A sealed (AES-256-GCM) signing secret, as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedSecret {
    /// Ciphertext with tag.
    pub ciphertext: Vec<u8>,
    /// Nonce.
    pub nonce: Vec<u8>,
    /// Master key id.
    pub key_id: String,
}

impl std::fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedSecret")
            .field(
                "ciphertext",
                &format_args!("<{} bytes>", self.ciphertext.len()),
            )
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// The associated data a team webhook's sealed secret is bound to (its team), so a ciphertext
/// copied to another team's row does not open.
#[must_use]
pub fn team_webhook_aad(team_id: Uuid) -> Vec<u8> {
    format!("rampart:team_webhook:{team_id}").into_bytes()
}

/// A team's webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamWebhook {
    /// The team.
    pub team_id: Uuid,
    /// Where deliveries go.
    pub url: String,
    /// The signing secret, sealed.
    pub secret: SealedSecret,
    /// Whether deliveries are made.
    pub enabled: bool,
    /// When it was set; batches that ended before are not announced.
    pub created_at: OffsetDateTime,
    /// Last change.
    pub updated_at: OffsetDateTime,
}

/// Setting a team's webhook: a new one needs a secret; an existing one keeps its secret when
/// `secret` is `None`.
#[derive(Debug, Clone)]
pub struct WebhookWrite {
    /// The team.
    pub team_id: Uuid,
    /// Where deliveries go.
    pub url: String,
    /// Whether deliveries are made.
    pub enabled: bool,
    /// A new sealed secret, or keep the current one.
    pub secret: Option<SealedSecret>,
}

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookDelivery {
    /// The attempt's id.
    pub id: Uuid,
    /// The team.
    pub team_id: Uuid,
    /// The batch whose end it announces.
    pub batch_id: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The URL it was sent to.
    pub url: String,
    /// When it started.
    pub attempted_at: OffsetDateTime,
    /// When it finished (`None` while running, or if its instance died).
    pub finished_at: Option<OffsetDateTime>,
    /// The receiver's HTTP status.
    pub status_code: Option<u16>,
    /// Why it failed without a status (connect error, timeout, refused address).
    pub error: Option<String>,
    /// While running: the lease; after a failure: when the next attempt may run; `None` when
    /// delivered or given up.
    pub next_attempt_at: Option<OffsetDateTime>,
    /// The receiver answered 2xx.
    pub delivered: bool,
}

/// An ended batch to announce, with the team's webhook and the attempt number to claim.
#[derive(Debug, Clone)]
pub struct DueWebhook {
    /// The team.
    pub team_id: Uuid,
    /// The batch, as stored (ended: `ended_at` is set).
    pub batch: Batch,
    /// The webhook's URL.
    pub url: String,
    /// Its sealed secret.
    pub secret: SealedSecret,
    /// The attempt to claim (1 for the first).
    pub attempt: u32,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptOutcome {
    /// When it finished.
    pub finished_at: OffsetDateTime,
    /// The receiver's status, if it answered.
    pub status_code: Option<u16>,
    /// Why it failed without a status.
    pub error: Option<String>,
    /// 2xx.
    pub delivered: bool,
    /// When the next attempt may run; `None` when delivered or given up.
    pub next_attempt_at: Option<OffsetDateTime>,
}

/// Team webhooks and their deliveries.
#[async_trait]
pub trait WebhookRepository: Send + Sync {
    /// Create or change a team's webhook. Returns it and whether it was created.
    ///
    /// # Errors
    /// [`crate::StoreError::NotFound`] for an unknown team, [`crate::StoreError::Invalid`] for a
    /// new webhook without a secret.
    async fn put_team_webhook(
        &self,
        write: &WebhookWrite,
        audit: Option<&NewAuditEvent>,
    ) -> Result<(TeamWebhook, bool)>;
    /// A team's webhook.
    ///
    /// # Errors
    /// [`crate::StoreError::NotFound`] when the team has none.
    async fn get_team_webhook(&self, team_id: Uuid) -> Result<TeamWebhook>;
    /// Remove a team's webhook (its delivery records stay).
    ///
    /// # Errors
    /// [`crate::StoreError::NotFound`] when the team has none.
    async fn delete_team_webhook(&self, team_id: Uuid, audit: Option<&NewAuditEvent>)
    -> Result<()>;
    /// A team's delivery attempts, newest first (one batch's when `batch_id` is given).
    async fn list_webhook_deliveries(
        &self,
        team_id: Uuid,
        batch_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>>;
    /// Ended batches to announce at `now`: the team has an enabled webhook set before the batch
    /// ended, no attempt delivered, fewer than `max_attempts` made, and the last one's
    /// `next_attempt_at` passed. Oldest end first.
    async fn due_webhooks(
        &self,
        now: OffsetDateTime,
        max_attempts: u32,
        limit: u32,
    ) -> Result<Vec<DueWebhook>>;
    /// Claim attempt `due.attempt` (leased until `lease_until`): `Some(id)` when this caller got
    /// it, `None` when another did.
    async fn claim_webhook_attempt(
        &self,
        due: &DueWebhook,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
    ) -> Result<Option<Uuid>>;
    /// Record how a claimed attempt ended.
    async fn finish_webhook_attempt(&self, id: Uuid, outcome: &AttemptOutcome) -> Result<()>;
}
