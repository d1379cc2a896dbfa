//! Caching policies of keys and teams: whether Rampart's response cache and prompt-cache
//! breakpoints apply to their requests, and how long cached answers live. Who may change them:
//! admins everywhere, team admins for their own team and its keys (caching keeps a team's answers
//! inside that team's own cache entries). Everyone who may see a key or a team may read its
//! policy. A change applies on the serving instance before the response, and on every other
//! instance within a fraction of a second.

use axum::extract::State;
use rampart_store::{CachePolicy, Role};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{audited, event};
use crate::AdminState;
use crate::error::{ApiError, Errors};
use crate::http::{Ctx, Id, Json};
use crate::session::Caller;

/// A caching policy; an absent field inherits (a key's from its team, a team's from the server's
/// `[cache]` configuration). An empty object removes the policy.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CachePolicyView {
    /// Answer repeated requests from Rampart's response cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_enabled: Option<bool>,
    /// Lifetime of a cached answer, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 2_592_000)]
    pub ttl_secs: Option<u64>,
    /// Add prompt-cache breakpoints to requests that carry none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breakpoints_enabled: Option<bool>,
}

impl From<CachePolicy> for CachePolicyView {
    fn from(p: CachePolicy) -> Self {
        Self {
            response_enabled: p.response_enabled,
            ttl_secs: p.ttl_secs,
            breakpoints_enabled: p.breakpoints_enabled,
        }
    }
}

fn to_policy(v: &CachePolicyView) -> Result<CachePolicy, ApiError> {
    let p = CachePolicy {
        response_enabled: v.response_enabled,
        ttl_secs: v.ttl_secs,
        breakpoints_enabled: v.breakpoints_enabled,
    };
    p.validate()?;
    Ok(p)
}

/// Admins, and team admins of `team`.
fn may_change(caller: &Caller, team: Uuid, what: &'static str) -> Result<(), ApiError> {
    match caller.role() {
        Role::Admin => Ok(()),
        Role::TeamAdmin if caller.team() == Some(team) => Ok(()),
        _ => Err(ApiError::Forbidden(what)),
    }
}

/// A key's own caching policy (unset fields inherit from its team's).
#[utoipa::path(get, path = "/keys/{id}/cache-policy", tag = "caching",
    params(("id" = Uuid, Path, description = "Key id")),
    responses((status = 200, description = "The key's own caching policy", body = CachePolicyView), Errors))]
pub(crate) async fn get_key(
    State(state): State<AdminState>,
    caller: Caller,
    Id(id): Id,
) -> Result<axum::Json<CachePolicyView>, ApiError> {
    let key = super::keys::visible(&state, &caller, id).await?;
    let p = state
        .store()
        .cache_policies()
        .key_cache_policy(key.id)
        .await?;
    Ok(axum::Json(p.into()))
}

/// Replace a key's caching policy (an empty object removes it). Admins, and team admins for
/// their team's keys.
#[utoipa::path(put, path = "/keys/{id}/cache-policy", tag = "caching",
    params(("id" = Uuid, Path, description = "Key id")),
    request_body = CachePolicyView,
    responses((status = 200, description = "The key's new caching policy", body = CachePolicyView), Errors))]
pub(crate) async fn put_key(
    State(state): State<AdminState>,
    ctx: Ctx,
    caller: Caller,
    Id(id): Id,
    Json(req): Json<CachePolicyView>,
) -> Result<axum::Json<CachePolicyView>, ApiError> {
    let key = super::keys::visible(&state, &caller, id).await?;
    let target = format!("key:{id}");
    let allowed = may_change(
        &caller,
        key.team_id,
        "only admins and the key's team admins may change its caching policy",
    );
    audited(
        &state,
        &ctx,
        &caller.actor(),
        "key.cache_policy",
        target.clone(),
        allowed,
    )
    .await?;
    let policy = to_policy(&req)?;
    let mut e = event(&ctx, &caller.actor(), "key.cache_policy", target);
    e.details = serde_json::json!({ "cache_policy": policy });
    let saved = state
        .store()
        .cache_policies()
        .set_key_cache_policy(id, &policy, Some(&e))
        .await?;
    state.invalidate().await;
    Ok(axum::Json(saved.into()))
}

/// A team's caching policy (unset fields inherit from the server's configuration).
#[utoipa::path(get, path = "/teams/{id}/cache-policy", tag = "caching",
    params(("id" = Uuid, Path, description = "Team id")),
    responses((status = 200, description = "The team's caching policy", body = CachePolicyView), Errors))]
pub(crate) async fn get_team(
    State(state): State<AdminState>,
    caller: Caller,
    Id(id): Id,
) -> Result<axum::Json<CachePolicyView>, ApiError> {
    let team = super::teams::visible(&state, &caller, id).await?;
    let p = state
        .store()
        .cache_policies()
        .team_cache_policy(team.id)
        .await?;
    Ok(axum::Json(p.into()))
}

/// Replace a team's caching policy (an empty object removes it). Admins, and the team's own
/// team admins.
#[utoipa::path(put, path = "/teams/{id}/cache-policy", tag = "caching",
    params(("id" = Uuid, Path, description = "Team id")),
    request_body = CachePolicyView,
    responses((status = 200, description = "The team's new caching policy", body = CachePolicyView), Errors))]
pub(crate) async fn put_team(
    State(state): State<AdminState>,
    ctx: Ctx,
    caller: Caller,
    Id(id): Id,
    Json(req): Json<CachePolicyView>,
) -> Result<axum::Json<CachePolicyView>, ApiError> {
    let team = super::teams::visible(&state, &caller, id).await?;
    let target = format!("team:{}", team.id);
    let allowed = may_change(
        &caller,
        team.id,
        "only admins and the team's team admins may change its caching policy",
    );
    audited(
        &state,
        &ctx,
        &caller.actor(),
        "team.cache_policy",
        target.clone(),
        allowed,
    )
    .await?;
    let policy = to_policy(&req)?;
    let mut e = event(&ctx, &caller.actor(), "team.cache_policy", target);
    e.details = serde_json::json!({ "cache_policy": policy });
    let saved = state
        .store()
        .cache_policies()
        .set_team_cache_policy(team.id, &policy, Some(&e))
        .await?;
    state.invalidate().await;
    Ok(axum::Json(saved.into()))
}
