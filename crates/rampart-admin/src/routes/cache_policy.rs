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
    replace(&state, &ctx, &caller, Owner::Key(key.id), key.team_id, &req).await
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
    replace(&state, &ctx, &caller, Owner::Team(team.id), team.id, &req).await
}

/// Whose policy a write replaces.
#[derive(Clone, Copy)]
enum Owner {
    Key(Uuid),
    Team(Uuid),
}

impl Owner {
    fn action(self) -> &'static str {
        match self {
            Owner::Key(_) => "key.cache_policy",
            Owner::Team(_) => "team.cache_policy",
        }
    }

    fn target(self) -> String {
        match self {
            Owner::Key(id) => format!("key:{id}"),
            Owner::Team(id) => format!("team:{id}"),
        }
    }

    fn refusal(self) -> &'static str {
        match self {
            Owner::Key(_) => "only admins and the key's team admins may change its caching policy",
            Owner::Team(_) => {
                "only admins and the team's team admins may change its caching policy"
            }
        }
    }
}

/// Replace `owner`'s policy (it belongs to `team`): the caller's right is checked and audited,
/// the write carries its audit event, and the key directory reloads before the answer.
async fn replace(
    state: &AdminState,
    ctx: &Ctx,
    caller: &Caller,
    owner: Owner,
    team: Uuid,
    req: &CachePolicyView,
) -> Result<axum::Json<CachePolicyView>, ApiError> {
    let allowed = may_change(caller, team, owner.refusal());
    audited(
        state,
        ctx,
        &caller.actor(),
        owner.action(),
        owner.target(),
        allowed,
    )
    .await?;
    let policy = to_policy(req)?;
    let mut e = event(ctx, &caller.actor(), owner.action(), owner.target());
    e.details = serde_json::json!({ "cache_policy": policy });
    let repo = state.store().cache_policies();
    let saved = match owner {
        Owner::Key(id) => repo.set_key_cache_policy(id, &policy, Some(&e)).await?,
        Owner::Team(id) => repo.set_team_cache_policy(id, &policy, Some(&e)).await?,
    };
    state.invalidate().await;
    Ok(axum::Json(saved.into()))
}
