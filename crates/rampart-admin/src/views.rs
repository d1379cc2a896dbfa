//! Request and response bodies of the admin API (the OpenAPI schemas come from these types).
//! Requests deny unknown fields; responses never carry a hash, a ciphertext or a secret except the
//! one-time `key` / tokens they exist to deliver.

use rampart_store::{ApiKey, AuditEvent, Role, Team, User};
use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

/// A role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoleName {
    /// Everything.
    Admin,
    /// Users and keys of their own team.
    TeamAdmin,
    /// Their own keys.
    Developer,
    /// Read-only view of their team.
    Viewer,
    /// Read-only audit log.
    Auditor,
}

impl From<Role> for RoleName {
    fn from(r: Role) -> Self {
        match r {
            Role::Admin => RoleName::Admin,
            Role::TeamAdmin => RoleName::TeamAdmin,
            Role::Developer => RoleName::Developer,
            Role::Viewer => RoleName::Viewer,
            Role::Auditor => RoleName::Auditor,
        }
    }
}

impl From<RoleName> for Role {
    fn from(r: RoleName) -> Self {
        match r {
            RoleName::Admin => Role::Admin,
            RoleName::TeamAdmin => Role::TeamAdmin,
            RoleName::Developer => Role::Developer,
            RoleName::Viewer => Role::Viewer,
            RoleName::Auditor => Role::Auditor,
        }
    }
}

/// `Some(None)` for an explicit `null`, `None` for an absent field (with `#[serde(default)]`).
fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A user (never the password hash).
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    /// Id.
    pub id: Uuid,
    /// E-mail address (lower case).
    pub email: String,
    /// Role.
    pub role: RoleName,
    /// Team.
    pub team_id: Option<Uuid>,
    /// Disabled users cannot sign in.
    pub disabled: bool,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        UserView {
            id: u.id,
            email: u.email,
            role: u.role.into(),
            team_id: u.team_id,
            disabled: u.disabled,
            created_at: u.created_at,
            updated_at: u.updated_at,
        }
    }
}

/// A team.
#[derive(Debug, Serialize, ToSchema)]
pub struct TeamView {
    /// Id.
    pub id: Uuid,
    /// Unique name.
    pub name: String,
    /// A disabled team's keys stop working.
    pub disabled: bool,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl From<Team> for TeamView {
    fn from(t: Team) -> Self {
        TeamView {
            id: t.id,
            name: t.name,
            disabled: t.disabled,
            created_at: t.created_at,
        }
    }
}

/// A virtual API key (never the key itself, except once in [`CreatedKey`]).
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    /// Id.
    pub id: Uuid,
    /// Owning team.
    pub team_id: Uuid,
    /// Owning user, if any.
    pub user_id: Option<Uuid>,
    /// Label.
    pub name: String,
    /// The key's visible prefix (for recognising it).
    pub prefix: String,
    /// Allowed model patterns (`*` wildcard); empty = all.
    pub allowed_models: Vec<String>,
    /// Allowed endpoints; empty = all.
    pub allowed_endpoints: Vec<String>,
    /// Expiry.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// Disabled keys are refused.
    pub enabled: bool,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last use (recorded in batches, so up to a few seconds late).
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    /// The key this one replaced.
    pub rotated_from: Option<Uuid>,
    /// When it was revoked.
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

impl From<ApiKey> for KeyView {
    fn from(k: ApiKey) -> Self {
        KeyView {
            id: k.id,
            team_id: k.team_id,
            user_id: k.user_id,
            name: k.name,
            prefix: k.prefix,
            allowed_models: k.allowed_models,
            allowed_endpoints: k.allowed_endpoints,
            expires_at: k.expires_at,
            enabled: k.enabled,
            created_at: k.created_at,
            last_used_at: k.last_used_at,
            rotated_from: k.rotated_from,
            revoked_at: k.revoked_at,
        }
    }
}

/// A key just created or rotated: `key` is shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    /// The key. Store it now: it cannot be shown again.
    pub key: String,
    /// The key's record.
    #[serde(flatten)]
    pub record: KeyView,
}

/// A rotated key: the new key, and the old one with its shortened expiry.
#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedKey {
    /// The new key. Store it now: it cannot be shown again.
    pub key: String,
    /// The new key's record.
    #[serde(flatten)]
    pub record: KeyView,
    /// The old key, which works until its `expires_at`.
    pub previous: KeyView,
}

/// An upstream credential, masked.
#[derive(Debug, Serialize, ToSchema)]
pub struct UpstreamView {
    /// Id.
    pub id: Uuid,
    /// Unique name.
    pub name: String,
    /// First and last characters only, e.g. `sk-ant-…wxyz`.
    pub key_hint: String,
    /// Id of the master key it is encrypted under.
    pub key_id: String,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last re-encryption.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// One audit event.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditView {
    /// Position in the chain.
    pub seq: i64,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub target: String,
    /// `success`, `failure` or `denied`.
    pub outcome: String,
    /// Client address.
    pub client_addr: Option<String>,
    /// Request id.
    pub request_id: Option<String>,
    /// Details (JSON).
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    /// Previous event's hash (hex).
    pub prev_hash: String,
    /// This event's hash (hex).
    pub hash: String,
}

impl From<AuditEvent> for AuditView {
    fn from(e: AuditEvent) -> Self {
        AuditView {
            seq: e.seq,
            at: e.at,
            actor: e.actor,
            action: e.action,
            target: e.target,
            outcome: e.outcome.as_str().to_owned(),
            client_addr: e.client_addr,
            request_id: e.request_id,
            details: serde_json::from_str(&e.details)
                .unwrap_or(serde_json::Value::String(e.details)),
            prev_hash: hex::encode(e.prev_hash),
            hash: hex::encode(e.hash),
        }
    }
}

/// A list.
#[derive(Debug, Serialize, ToSchema)]
pub struct List<T: ToSchema> {
    /// The items.
    pub data: Vec<T>,
}

/// A page of the audit log.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    /// Events, oldest first.
    pub data: Vec<AuditView>,
    /// Whether more events follow `last_seq`.
    pub has_more: bool,
    /// The last `seq` on this page (pass it as `after_seq`), or null for an empty page.
    pub last_seq: Option<i64>,
}

/// The audit chain check.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditVerification {
    /// Whether every event links to the previous one and matches its hash.
    pub ok: bool,
    /// How many events were checked (the newest `seq`).
    pub checked: i64,
    /// The first broken event.
    pub first_break: Option<ChainBreakView>,
}

/// Where the chain breaks.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChainBreakView {
    /// The first event that fails.
    pub seq: i64,
    /// Why.
    pub reason: String,
}

/// Credentials.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// E-mail address.
    #[schema(max_length = 254)]
    pub email: String,
    /// Password.
    #[schema(max_length = 256, format = Password)]
    pub password: String,
}

/// A refresh token to exchange.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// The refresh token from the last login or refresh.
    #[schema(max_length = 512)]
    pub refresh_token: String,
}

/// Optional logout body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogoutRequest {
    /// Also revoke this refresh token's family.
    #[serde(default)]
    #[schema(max_length = 512)]
    pub refresh_token: Option<String>,
}

/// An access token id to revoke.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// The token's `jti` claim.
    #[schema(max_length = 128)]
    pub jti: String,
}

/// First-admin setup.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetupRequest {
    /// The one-time token `rampart serve` printed.
    #[schema(max_length = 512)]
    pub setup_token: String,
    /// The admin's e-mail address.
    #[schema(max_length = 254)]
    pub email: String,
    /// The admin's password.
    #[schema(max_length = 256, format = Password)]
    pub password: String,
}

/// Tokens for a session.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenPair {
    /// Short-lived JWT for `Authorization: Bearer`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Single-use token for `POST /admin/v1/auth/refresh`.
    pub refresh_token: String,
    /// Seconds until the refresh token expires.
    pub refresh_expires_in: u64,
    /// The signed-in user.
    pub user: UserView,
}

/// A new user.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// E-mail address (unique, case-insensitive).
    #[schema(max_length = 254)]
    pub email: String,
    /// Password (12+ characters, not a common one).
    #[schema(min_length = 12, max_length = 256, format = Password)]
    pub password: String,
    /// Role.
    pub role: RoleName,
    /// Team (team admins: defaults to, and must be, their own).
    #[serde(default)]
    pub team_id: Option<Uuid>,
}

/// Changes to a user; absent fields stay as they are.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// New e-mail address.
    #[serde(default)]
    #[schema(max_length = 254)]
    pub email: Option<String>,
    /// New role.
    #[serde(default)]
    pub role: Option<RoleName>,
    /// New team; `null` for none.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Uuid>)]
    pub team_id: Option<Option<Uuid>>,
    /// New password.
    #[serde(default)]
    #[schema(min_length = 12, max_length = 256, format = Password)]
    pub password: Option<String>,
    /// The current password (required to change your own).
    #[serde(default)]
    #[schema(max_length = 256, format = Password)]
    pub current_password: Option<String>,
    /// Disable or enable.
    #[serde(default)]
    pub disabled: Option<bool>,
}

/// A new team.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTeam {
    /// Unique name.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
}

/// Changes to a team.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTeam {
    /// New name.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 100)]
    pub name: Option<String>,
    /// Disable (its keys stop working) or enable.
    #[serde(default)]
    pub disabled: Option<bool>,
}

/// A new key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Label.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// Owning team (admins: required; others: defaults to their own).
    #[serde(default)]
    pub team_id: Option<Uuid>,
    /// Owning user (developers: always themselves).
    #[serde(default)]
    pub user_id: Option<Uuid>,
    /// Allowed model patterns (`*` wildcard); empty or absent = all.
    #[serde(default)]
    pub allowed_models: Vec<String>,
    /// Allowed endpoints; empty or absent = all.
    #[serde(default)]
    pub allowed_endpoints: Vec<String>,
    /// Expiry (RFC 3339, in the future); absent = none.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

/// Changes to a key.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    /// New label.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 100)]
    pub name: Option<String>,
    /// New model patterns.
    #[serde(default)]
    pub allowed_models: Option<Vec<String>>,
    /// New endpoints.
    #[serde(default)]
    pub allowed_endpoints: Option<Vec<String>>,
    /// New expiry; `null` for none.
    #[serde(default, deserialize_with = "nullable_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Option<OffsetDateTime>>,
    /// Enable or disable.
    #[serde(default)]
    pub enabled: Option<bool>,
}

fn nullable_time<'de, D>(d: D) -> Result<Option<Option<OffsetDateTime>>, D::Error>
where
    D: Deserializer<'de>,
{
    time::serde::rfc3339::option::deserialize(d).map(Some)
}

/// Rotation options.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// How long the old key keeps working, in seconds (default 86400, at most 2592000).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 2_592_000)]
    pub overlap_seconds: Option<u64>,
}

/// A new upstream credential.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUpstream {
    /// Unique name.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// The Anthropic API key. Encrypted at rest; never returned.
    #[schema(min_length = 20, max_length = 512, format = Password)]
    pub api_key: String,
}

/// Filters for user lists.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UserFilter {
    /// Only this team's users.
    pub team_id: Option<Uuid>,
}

/// Filters for key lists.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct KeyFilter {
    /// Only this team's keys.
    pub team_id: Option<Uuid>,
    /// Only this user's keys.
    pub user_id: Option<Uuid>,
}

/// Audit paging.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Only events after this `seq`.
    #[param(minimum = 0)]
    pub after_seq: Option<i64>,
    /// Page size, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// A budget's period (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PeriodName {
    /// A calendar day.
    Day,
    /// A calendar month.
    Month,
}

/// Rate limits and a budget; an absent field is not limited here (a key then falls back to its
/// team's default for keys).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Requests per minute.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "limit_value"
    )]
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    pub rpm: Option<u64>,
    /// Input tokens per minute (uncached, cache writes and cache reads).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "limit_value"
    )]
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    pub itpm: Option<u64>,
    /// Output tokens per minute.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "limit_value"
    )]
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    pub otpm: Option<u64>,
    /// Requests in flight at once.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "limit_value"
    )]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub concurrency: Option<u64>,
    /// Budget per period in micro-dollars (1 USD = 1 000 000); with `budget_period`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "limit_value"
    )]
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_i64)]
    pub budget_micros: Option<u64>,
    /// The budget's period; with `budget_micros`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_period: Option<PeriodName>,
}

/// A team's limits: on the team as a whole (all its keys together), and the defaults for each
/// of its keys.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TeamLimits {
    /// Shared by all the team's keys; absent or `null` is `{}` (none).
    #[serde(default, deserialize_with = "null_is_none")]
    #[schema(nullable)]
    pub team: Limits,
    /// For each key that does not set its own; absent or `null` is `{}` (none).
    #[serde(default, deserialize_with = "null_is_none")]
    #[schema(nullable)]
    pub key_defaults: Limits,
}

/// A limit's value. An integer too large for a `u64` (serde_json reads it as a float) is taken as
/// `u64::MAX`, which every range check refuses: the client is told the field's range, as for any
/// other value too large, rather than serde's "floating point 1.8e19, expected u64". Everything
/// else is as a plain `Option<u64>`, with serde's messages.
fn limit_value<'de, D>(d: D) -> Result<Option<u64>, D::Error>
where
    D: Deserializer<'de>,
{
    struct Value;
    impl<'de> serde::de::Visitor<'de> for Value {
        type Value = Option<u64>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("u64")
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            u64::try_from(v)
                .map(Some)
                .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
        }

        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
            // 2^64: the smallest integer a u64 cannot hold (every float this large is whole).
            if v >= 18_446_744_073_709_551_616.0 {
                Ok(Some(u64::MAX))
            } else {
                Err(E::invalid_type(serde::de::Unexpected::Float(v), &self))
            }
        }
    }
    d.deserialize_option(Value)
}

/// `null` as the default: a part of a body that `PUT` replaces, where `null` removes it as
/// absence does (as `null` removes one field of [`Limits`]).
fn null_is_none<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}
