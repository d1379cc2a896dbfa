//! Usage and cost from the ledger's rollups (never the raw records), grouped by key, team, model
//! and day over a time range, in the caller's scope: admins see everything, team admins and
//! viewers their team, developers their own keys, auditors nothing.

use axum::extract::State;
use rampart_store::{Role, StoreError, UsageQuery};
use serde::Deserialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::AdminState;
use crate::error::{ApiError, Errors};
use crate::http::Query;
use crate::session::Caller;
use crate::usage::{Spelling, UsageInputs, UsageReport, check_inputs};

/// What `GET /usage` takes.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct UsageParams {
    /// Start (RFC 3339, inclusive; rounded down to the hour). Default: 30 days before `to`.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[param(value_type = Option<String>, format = DateTime)]
    pub from: Option<OffsetDateTime>,
    /// End (RFC 3339, exclusive; rounded up to the hour). Default: now.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[param(value_type = Option<String>, format = DateTime)]
    pub to: Option<OffsetDateTime>,
    /// Comma-separated dimensions: `key`, `team`, `model`, `day` (none: one total row).
    pub group_by: Option<String>,
    /// Only this key.
    pub key_id: Option<Uuid>,
    /// Only this team.
    pub team_id: Option<Uuid>,
    /// Only keys of this user.
    pub user_id: Option<Uuid>,
    /// Only this model (the served model, else the one asked for).
    #[param(max_length = 200)]
    pub model: Option<String>,
}

/// Usage in the caller's scope, summed from the hourly and daily rollups.
#[utoipa::path(get, path = "/usage", tag = "usage", params(UsageParams),
    responses((status = 200, description = "Usage", body = UsageReport), Errors))]
pub(crate) async fn summary(
    State(state): State<AdminState>,
    caller: Caller,
    Query(params): Query<UsageParams>,
) -> Result<axum::Json<UsageReport>, ApiError> {
    let q = scoped(&state, &caller, &params).await?;
    let rows = state.store().usage().usage_summary(&q).await?;
    Ok(axum::Json(UsageReport::new(&q, rows)))
}

/// The query the parameters ask for, checked as `rampart usage` checks its flags
/// ([`check_inputs`]) and narrowed to what the caller may see: out-of-scope filters are `404`
/// (existence is not revealed), auditors `403`.
async fn scoped(
    state: &AdminState,
    caller: &Caller,
    p: &UsageParams,
) -> Result<UsageQuery, ApiError> {
    if caller.role() == Role::Auditor {
        return Err(ApiError::Forbidden("auditors may read the audit log only"));
    }
    let inputs = UsageInputs {
        from: p.from,
        to: p.to,
        group_by: p.group_by.as_deref(),
        model: p.model.as_deref(),
    };
    let mut q =
        check_inputs(&inputs, OffsetDateTime::now_utc(), Spelling::Api).map_err(ApiError::bad)?;
    q.key_id = p.key_id;
    q.team_id = p.team_id;
    q.user_id = p.user_id;
    // Developers see their own keys, which are in their team: another team is out of scope.
    if caller.role() == Role::Developer && q.team_id.is_some_and(|t| Some(t) != caller.team()) {
        return Err(ApiError::NotFound("team"));
    }
    // Team roles: a user filter names a user of their team, else 404 (as a key filter does).
    if let (Role::TeamAdmin | Role::Viewer, Some(id)) = (caller.role(), q.user_id) {
        match state.store().get_user(id).await {
            Ok(u) if u.team_id.is_some() && u.team_id == caller.team() => {}
            Ok(_) | Err(StoreError::NotFound) => return Err(ApiError::NotFound("user")),
            Err(e) => return Err(e.into()),
        }
    }
    // An admin's filter names a team or user that exists, else 404, as a key filter does
    // (teams and users are never deleted: an unknown id is a mistake, not past usage).
    if caller.role() == Role::Admin {
        if let Some(id) = q.team_id {
            match state.store().get_team(id).await {
                Ok(_) => {}
                Err(StoreError::NotFound) => return Err(ApiError::NotFound("team")),
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(id) = q.user_id {
            match state.store().get_user(id).await {
                Ok(_) => {}
                Err(StoreError::NotFound) => return Err(ApiError::NotFound("user")),
                Err(e) => return Err(e.into()),
            }
        }
    }
    super::keys::narrow_to_visible_keys(caller, &mut q.team_id, &mut q.user_id)?;
    // A key filter names a key the caller may see, else 404.
    if let Some(id) = q.key_id {
        super::keys::visible(state, caller, id).await?;
    }
    Ok(q)
}
