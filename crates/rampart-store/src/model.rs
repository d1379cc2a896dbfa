//! The records the repositories read and write. Plain data: no SQL, no engine types.
//!
//! Timestamps are UTC and carry microsecond precision (what both engines store); values passed in
//! with finer precision come back truncated.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::StoreError;

/// A tenant: users and API keys belong to a team.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Team {
    /// UUIDv7, assigned by the store.
    pub id: Uuid,
    /// Unique.
    pub name: String,
    /// A disabled team's keys and users should be refused by the caller.
    pub disabled: bool,
    /// When the team was created.
    pub created_at: OffsetDateTime,
}

/// What a user may do on the admin plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Everything within the own team.
    TeamAdmin,
    /// Own keys, own usage.
    Developer,
    /// Read-only usage of the own team.
    Viewer,
    /// Read-only audit log.
    Auditor,
}

impl Role {
    /// Every role, in order of decreasing power.
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::TeamAdmin,
        Role::Developer,
        Role::Viewer,
        Role::Auditor,
    ];

    /// The stored (and serialised) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::TeamAdmin => "team_admin",
            Role::Developer => "developer",
            Role::Viewer => "viewer",
            Role::Auditor => "auditor",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| StoreError::Invalid(format!("unknown role {s:?}")))
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Fields of a new user.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Unique regardless of ASCII case; stored as given.
    pub email: String,
    /// An argon2 PHC string computed by the caller; stored opaque.
    pub password_hash: String,
    /// Role on the admin plane.
    pub role: Role,
    /// Home team; `None` for organisation-wide users (admins, auditors).
    pub team_id: Option<Uuid>,
}

/// A user of the admin plane.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// UUIDv7, assigned by the store.
    pub id: Uuid,
    /// As given at creation or last update.
    pub email: String,
    /// Argon2 PHC string (opaque to the store). Redacted from `Debug`.
    pub password_hash: String,
    /// Role on the admin plane.
    pub role: Role,
    /// Home team.
    pub team_id: Option<Uuid>,
    /// Disabled users cannot log in.
    pub disabled: bool,
    /// When the user was created.
    pub created_at: OffsetDateTime,
    /// Last change through [`crate::Repository::update_user`] or [`crate::Repository::set_user_disabled`].
    pub updated_at: OffsetDateTime,
    /// Sessions issued before this instant are void (set by a password change or disabling).
    pub sessions_valid_after: Option<OffsetDateTime>,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("password_hash", &"<redacted>")
            .field("role", &self.role)
            .field("team_id", &self.team_id)
            .field("disabled", &self.disabled)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .field("sessions_valid_after", &self.sessions_valid_after)
            .finish()
    }
}

/// A partial update of a user; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserUpdate {
    /// New email.
    pub email: Option<String>,
    /// New argon2 PHC string.
    pub password_hash: Option<String>,
    /// New role.
    pub role: Option<Role>,
    /// `Some(None)` removes the user from their team.
    pub team_id: Option<Option<Uuid>>,
}

/// Fields of a new virtual API key. The key itself never reaches the store, only its keyed hash.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    /// Owning team.
    pub team_id: Uuid,
    /// Owning user, if any.
    pub user_id: Option<Uuid>,
    /// Human label.
    pub name: String,
    /// The visible part shown in listings, e.g. `rk_live_abcd`.
    pub prefix: String,
    /// Keyed hash (e.g. HMAC-SHA256 with the server pepper) of the full key; unique.
    pub key_hash: Vec<u8>,
    /// Model patterns the key may use; the store does not interpret them.
    pub allowed_models: Vec<String>,
    /// Endpoints the key may call; the store does not interpret them.
    pub allowed_endpoints: Vec<String>,
    /// After this instant the key is expired.
    pub expires_at: Option<OffsetDateTime>,
}

/// A virtual API key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// UUIDv7, assigned by the store.
    pub id: Uuid,
    /// Owning team.
    pub team_id: Uuid,
    /// Owning user, if any.
    pub user_id: Option<Uuid>,
    /// Human label.
    pub name: String,
    /// Visible prefix.
    pub prefix: String,
    /// Keyed hash of the full key.
    pub key_hash: Vec<u8>,
    /// Model patterns.
    pub allowed_models: Vec<String>,
    /// Endpoints.
    pub allowed_endpoints: Vec<String>,
    /// Expiry, if any (set by rotation to the end of the overlap).
    pub expires_at: Option<OffsetDateTime>,
    /// Cleared by [`crate::Repository::set_api_key_enabled`].
    pub enabled: bool,
    /// When the key was created.
    pub created_at: OffsetDateTime,
    /// Last use as recorded by [`crate::Repository::touch_api_keys_last_used`].
    pub last_used_at: Option<OffsetDateTime>,
    /// The key this one replaced.
    pub rotated_from: Option<Uuid>,
    /// When the key was revoked; a revoked key never works again.
    pub revoked_at: Option<OffsetDateTime>,
}

impl ApiKey {
    /// Whether the key may authenticate at `now`: enabled, not revoked, not expired.
    pub fn is_usable_at(&self, now: OffsetDateTime) -> bool {
        self.enabled && self.revoked_at.is_none() && self.expires_at.is_none_or(|t| t > now)
    }
}

/// A partial update of an API key; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ApiKeyUpdate {
    /// New label.
    pub name: Option<String>,
    /// New model patterns.
    pub allowed_models: Option<Vec<String>>,
    /// New endpoints.
    pub allowed_endpoints: Option<Vec<String>>,
    /// `Some(None)` removes the expiry.
    pub expires_at: Option<Option<OffsetDateTime>>,
}

/// Which keys [`crate::Repository::list_api_keys`] returns; every `Some` narrows the list.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiKeyFilter {
    /// Only this team's keys.
    pub team_id: Option<Uuid>,
    /// Only this user's keys.
    pub user_id: Option<Uuid>,
}

/// An encrypted upstream (Anthropic) credential. The store never sees the plaintext.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamCredential {
    /// UUIDv7, assigned by the store.
    pub id: Uuid,
    /// Unique label.
    pub name: String,
    /// AEAD ciphertext (with tag). Redacted from `Debug`.
    pub ciphertext: Vec<u8>,
    /// AEAD nonce.
    pub nonce: Vec<u8>,
    /// Which master key encrypted it.
    pub key_id: String,
    /// When the credential was created.
    pub created_at: OffsetDateTime,
    /// Last re-encryption.
    pub updated_at: OffsetDateTime,
}

impl std::fmt::Debug for UpstreamCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamCredential")
            .field("id", &self.id)
            .field("name", &self.name)
            .field(
                "ciphertext",
                &format_args!("<{} bytes>", self.ciphertext.len()),
            )
            .field("key_id", &self.key_id)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .finish_non_exhaustive()
    }
}

/// The associated data an upstream credential's ciphertext is bound to: its unique name, so a
/// ciphertext copied to another row does not open. Every sealer and opener uses this.
#[must_use]
pub fn upstream_credential_aad(name: &str) -> Vec<u8> {
    format!("rampart:upstream_credential:{name}").into_bytes()
}

/// Fields of a new upstream credential.
#[derive(Debug, Clone)]
pub struct NewUpstreamCredential {
    /// Unique label.
    pub name: String,
    /// AEAD ciphertext.
    pub ciphertext: Vec<u8>,
    /// AEAD nonce.
    pub nonce: Vec<u8>,
    /// Master key id.
    pub key_id: String,
}

/// One row of a master-key rotation: the credential `id`, still encrypted under `old_key_id`,
/// gets a new ciphertext under `key_id`.
#[derive(Debug, Clone)]
pub struct Reencrypted {
    /// Credential id.
    pub id: Uuid,
    /// The key id the caller decrypted with; the update is refused if the row has another.
    pub old_key_id: String,
    /// New ciphertext.
    pub ciphertext: Vec<u8>,
    /// New nonce.
    pub nonce: Vec<u8>,
    /// New master key id.
    pub key_id: String,
}

/// Fields of a new refresh token; the token itself never reaches the store, only its hash.
#[derive(Debug, Clone)]
pub struct NewRefreshToken {
    /// All tokens rotated from one login share a family; reuse of a spent one revokes the family.
    pub family_id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// Hash of the opaque token; unique.
    pub token_hash: Vec<u8>,
    /// After this instant the token cannot be spent.
    pub expires_at: OffsetDateTime,
}

/// A stored refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshToken {
    /// UUIDv7, assigned by the store.
    pub id: Uuid,
    /// Rotation family.
    pub family_id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// Hash of the opaque token.
    pub token_hash: Vec<u8>,
    /// When it was stored.
    pub issued_at: OffsetDateTime,
    /// Expiry.
    pub expires_at: OffsetDateTime,
    /// When it was exchanged for a new pair.
    pub spent_at: Option<OffsetDateTime>,
    /// When its family was revoked.
    pub revoked_at: Option<OffsetDateTime>,
}

/// What [`crate::Repository::spend_refresh_token`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpendOutcome {
    /// This call spent the token: issue a new pair in the same family.
    Spent(RefreshToken),
    /// The token had been spent before: a replay, so revoke the family.
    AlreadySpent(RefreshToken),
    /// The token's family had been revoked.
    Revoked(RefreshToken),
    /// The token is past its expiry.
    Expired(RefreshToken),
}

/// A revoked access-token id, kept until the token would have expired anyway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedJti {
    /// The JWT `jti`.
    pub jti: String,
    /// The token's `exp`.
    pub expires_at: OffsetDateTime,
}

/// How an audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    /// It happened.
    Success,
    /// It failed (bad password, invalid input, ...).
    Failure,
    /// It was refused by policy (role, scope).
    Denied,
}

impl AuditOutcome {
    /// The stored (and hashed) name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Success => "success",
            AuditOutcome::Failure => "failure",
            AuditOutcome::Denied => "denied",
        }
    }
}

impl std::str::FromStr for AuditOutcome {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            AuditOutcome::Success,
            AuditOutcome::Failure,
            AuditOutcome::Denied,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
        .ok_or_else(|| StoreError::Invalid(format!("unknown audit outcome {s:?}")))
    }
}

/// An audit event to append. Never put a secret in any field.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEvent {
    /// Who: a user id, `key:<id>`, `system`, or the attempted login name.
    pub actor: String,
    /// What, e.g. `user.create`, `auth.login`, `key.denied`.
    pub action: String,
    /// On what, e.g. `user:<id>`.
    pub target: String,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// Client address, if known.
    pub client_addr: Option<String>,
    /// Request id, if known.
    pub request_id: Option<String>,
    /// Anything else, as JSON.
    pub details: serde_json::Value,
}

impl NewAuditEvent {
    /// An event with outcome `success`, no client address, request id or details.
    pub fn new(
        actor: impl Into<String>,
        action: impl Into<String>,
        target: impl Into<String>,
    ) -> Self {
        NewAuditEvent {
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            outcome: AuditOutcome::Success,
            client_addr: None,
            request_id: None,
            details: serde_json::Value::Object(serde_json::Map::new()),
        }
    }
}

/// A stored audit event: a link of the hash chain.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// Position in the chain, from 1, without gaps.
    pub seq: i64,
    /// When it was appended.
    pub at: OffsetDateTime,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub target: String,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// Client address.
    pub client_addr: Option<String>,
    /// Request id.
    pub request_id: Option<String>,
    /// The stored JSON text of the details, exactly as hashed.
    pub details: String,
    /// Hash of the previous event (32 zero bytes for the first).
    pub prev_hash: Vec<u8>,
    /// This event's hash, see [`crate::chain`].
    pub hash: Vec<u8>,
}

/// Which audit events [`crate::Repository::list_audit`] returns, one page at a time.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only this actor.
    pub actor: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// Only events at or after this instant.
    pub since: Option<OffsetDateTime>,
    /// Only events before this instant.
    pub until: Option<OffsetDateTime>,
    /// Keyset cursor: only events after this `seq` (oldest first) or before it (`newest_first`).
    pub cursor: Option<i64>,
    /// Newest first instead of oldest first.
    pub newest_first: bool,
    /// Page size; 0 means the default of 100, larger than 1000 is capped at 1000.
    pub limit: u32,
}

/// The first place where the audit chain does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainBreak {
    /// The first event that fails verification.
    pub seq: i64,
    /// Why it fails.
    pub reason: BreakReason,
}

/// Why an audit event fails verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakReason {
    /// `seq` is not one more than the previous event's (a deleted or reordered row).
    SeqGap,
    /// `prev_hash` is not the previous event's hash (a deleted, inserted or reordered row).
    PrevHashMismatch,
    /// The stored hash does not match the row's contents (an edited row).
    HashMismatch,
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let why = match self.reason {
            BreakReason::SeqGap => "sequence gap (row deleted or reordered)",
            BreakReason::PrevHashMismatch => {
                "previous-hash mismatch (row deleted, inserted or reordered)"
            }
            BreakReason::HashMismatch => "hash mismatch (row edited)",
        };
        write!(f, "audit chain broken at seq {}: {why}", self.seq)
    }
}

/// Result of [`crate::Store::migrate`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// `(version, description)` applied by this call.
    pub applied_now: Vec<(i64, String)>,
    /// `(version, description)` that were already applied.
    pub already_applied: Vec<(i64, String)>,
}
