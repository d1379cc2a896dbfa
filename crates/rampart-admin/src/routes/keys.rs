//! Virtual API keys: shown once, stored as keyed digests, scoped to models and endpoints,
//! rotated with an overlap. Every change reloads the serving instance's key directory before the
//! response, so it applies at once here (and within a second on other instances).

use axum::extract::State;
use axum::response::IntoResponse;
use http::StatusCode;
use rampart_store::{ApiKey, ApiKeyFilter, ApiKeyUpdate, NewApiKey, Role, StoreError};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{audited, event};
use crate::AdminState;
use crate::error::{ApiError, Errors};
use crate::http::{Ctx, Id, Json, OptionalJson, Query};
use crate::session::Caller;
use crate::validate;
use crate::views::{
    CreateKey, CreatedKey, KeyFilter, KeyView, List, RotateKey, RotatedKey, UpdateKey,
};

/// Default and longest rotation overlap.
const DEFAULT_OVERLAP_SECS: u64 = 86_400;
const MAX_OVERLAP_SECS: u64 = 30 * 86_400;
/// The body's lists, as messages name them.
const MODELS: validate::ListName<'static> = validate::ListName::Field("allowed_models");
const ENDPOINTS: validate::ListName<'static> = validate::ListName::Field("allowed_endpoints");

fn may_see(caller: &Caller, key: &ApiKey) -> bool {
    match caller.role() {
        Role::Admin => true,
        Role::TeamAdmin | Role::Viewer => caller.team() == Some(key.team_id),
        Role::Developer => key.user_id == Some(caller.user.id),
        Role::Auditor => false,
    }
}

fn may_manage(caller: &Caller, key: &ApiKey) -> bool {
    match caller.role() {
        Role::Admin => true,
        Role::TeamAdmin => caller.team() == Some(key.team_id),
        Role::Developer => key.user_id == Some(caller.user.id),
        Role::Viewer | Role::Auditor => false,
    }
}

fn no_auditors(caller: &Caller) -> Result<(), ApiError> {
    if caller.role() == Role::Auditor {
        Err(ApiError::Forbidden("auditors may read the audit log only"))
    } else {
        Ok(())
    }
}

/// The key `id` if `caller` may see it, else `404` (auditors: `403`).
pub(super) async fn visible(
    state: &AdminState,
    caller: &Caller,
    id: Uuid,
) -> Result<ApiKey, ApiError> {
    no_auditors(caller)?;
    match state.store().get_api_key(id).await {
        Ok(k) if may_see(caller, &k) => Ok(k),
        Ok(_) | Err(StoreError::NotFound) => Err(ApiError::NotFound("key")),
        Err(e) => Err(e.into()),
    }
}

/// A key the caller may see and change: 404 when out of sight, 403 when read-only.
async fn managed(
    state: &AdminState,
    ctx: &Ctx,
    caller: &Caller,
    id: Uuid,
    action: &str,
) -> Result<ApiKey, ApiError> {
    let key = visible(state, caller, id).await?;
    let allowed = if may_manage(caller, &key) {
        Ok(key)
    } else {
        Err(ApiError::Forbidden("your role may not change this key"))
    };
    audited(
        state,
        ctx,
        &caller.actor(),
        action,
        format!("key:{id}"),
        allowed,
    )
    .await
}

/// List keys in the caller's scope.
#[utoipa::path(get, path = "/keys", tag = "keys", params(KeyFilter),
    responses((status = 200, description = "Keys", body = List<KeyView>), Errors))]
pub(crate) async fn list(
    State(state): State<AdminState>,
    caller: Caller,
    Query(filter): Query<KeyFilter>,
) -> Result<axum::Json<List<KeyView>>, ApiError> {
    no_auditors(&caller)?;
    let mut f = ApiKeyFilter {
        team_id: filter.team_id,
        user_id: filter.user_id,
    };
    narrow_to_visible_keys(&caller, &mut f.team_id, &mut f.user_id)?;
    let keys = state.store().list_api_keys(f).await?;
    Ok(axum::Json(List {
        data: keys.into_iter().map(KeyView::from).collect(),
    }))
}

/// Narrow team and user filters to the keys `caller` may see (team admins and viewers: their
/// team's; developers: their own). A filter outside that scope is `404` (existence is not
/// revealed); auditors see no keys (`403`).
pub(super) fn narrow_to_visible_keys(
    caller: &Caller,
    team_id: &mut Option<Uuid>,
    user_id: &mut Option<Uuid>,
) -> Result<(), ApiError> {
    match caller.role() {
        Role::Admin => {}
        Role::TeamAdmin | Role::Viewer => {
            let own = caller
                .team()
                .ok_or(ApiError::Forbidden("you have no team"))?;
            if team_id.is_some_and(|t| t != own) {
                return Err(ApiError::NotFound("team"));
            }
            *team_id = Some(own);
        }
        Role::Developer => {
            if user_id.is_some_and(|u| u != caller.user.id) {
                return Err(ApiError::NotFound("user"));
            }
            *user_id = Some(caller.user.id);
        }
        Role::Auditor => {
            return Err(ApiError::Forbidden("auditors may read the audit log only"));
        }
    }
    Ok(())
}

/// Resolve the team and user a new key belongs to, per the caller's role.
async fn owner(
    state: &AdminState,
    caller: &Caller,
    req: &CreateKey,
) -> Result<(Uuid, Option<Uuid>), ApiError> {
    let (team, user) = match caller.role() {
        Role::Admin => (
            req.team_id
                .ok_or_else(|| ApiError::bad("team_id is required"))?,
            req.user_id,
        ),
        Role::TeamAdmin => {
            let own = caller
                .team()
                .ok_or(ApiError::Forbidden("you have no team"))?;
            if req.team_id.is_some_and(|t| t != own) {
                return Err(ApiError::NotFound("team"));
            }
            (own, req.user_id)
        }
        Role::Developer => {
            let own = caller
                .team()
                .ok_or(ApiError::Forbidden("you have no team"))?;
            if req.team_id.is_some_and(|t| t != own) {
                return Err(ApiError::NotFound("team"));
            }
            if req.user_id.is_some_and(|u| u != caller.user.id) {
                return Err(ApiError::Forbidden(
                    "developers may create keys for themselves only",
                ));
            }
            (own, Some(caller.user.id))
        }
        Role::Viewer | Role::Auditor => {
            return Err(ApiError::Forbidden("your role may not create keys"));
        }
    };
    match state.store().get_team(team).await {
        Ok(_) => {}
        Err(StoreError::NotFound) => return Err(ApiError::bad("team_id names no team")),
        Err(e) => return Err(e.into()),
    }
    if let Some(u) = user {
        match state.store().get_user(u).await {
            Ok(found) if found.team_id == Some(team) => {}
            Ok(_) | Err(StoreError::NotFound) => {
                return Err(ApiError::bad("user_id names no user of that team"));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok((team, user))
}

/// Create a key; the key is in the response, once.
#[utoipa::path(post, path = "/keys", tag = "keys", request_body = CreateKey,
    responses((status = 201, description = "Created; `key` is shown only now", body = CreatedKey), Errors))]
pub(crate) async fn create(
    State(state): State<AdminState>,
    ctx: Ctx,
    caller: Caller,
    Json(req): Json<CreateKey>,
) -> Result<impl IntoResponse, ApiError> {
    let owner = owner(&state, &caller, &req).await;
    let owner = match owner {
        Err(ApiError::Forbidden(_)) => {
            audited(
                &state,
                &ctx,
                &caller.actor(),
                "key.create",
                "key".to_owned(),
                owner,
            )
            .await?
        }
        other => other?,
    };
    let (team_id, user_id) = owner;
    let name = validate::name("name", &req.name).map_err(ApiError::BadRequest)?;
    let allowed_models =
        validate::model_patterns(MODELS, &req.allowed_models).map_err(ApiError::BadRequest)?;
    let allowed_endpoints =
        validate::endpoints(ENDPOINTS, &req.allowed_endpoints).map_err(ApiError::BadRequest)?;
    let expires_at = req
        .expires_at
        .map(|t| validate::expiry(t, OffsetDateTime::now_utc()))
        .transpose()
        .map_err(ApiError::BadRequest)?;
    let new = state.hasher().generate(&state.settings().key_env);
    let mut e = event(
        &ctx,
        &caller.actor(),
        "key.create",
        format!("team:{team_id}"),
    );
    e.details = serde_json::json!({"prefix": new.prefix, "name": name});
    let key = state
        .store()
        .create_api_key(
            &NewApiKey {
                team_id,
                user_id,
                name,
                prefix: new.prefix.clone(),
                key_hash: new.digest.0.to_vec(),
                allowed_models,
                allowed_endpoints,
                expires_at,
            },
            Some(&e),
        )
        .await?;
    state.invalidate().await;
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedKey {
            key: new.key.expose().to_owned(),
            record: key.into(),
        }),
    ))
}

/// A key.
#[utoipa::path(get, path = "/keys/{id}", tag = "keys",
    params(("id" = Uuid, Path, description = "Key id")),
    responses((status = 200, description = "The key", body = KeyView), Errors))]
pub(crate) async fn get(
    State(state): State<AdminState>,
    caller: Caller,
    Id(id): Id,
) -> Result<axum::Json<KeyView>, ApiError> {
    Ok(axum::Json(visible(&state, &caller, id).await?.into()))
}

/// Change a key's label, scopes, expiry or enabled flag.
#[utoipa::path(patch, path = "/keys/{id}", tag = "keys",
    params(("id" = Uuid, Path, description = "Key id")),
    request_body = UpdateKey,
    responses((status = 200, description = "Changed", body = KeyView), Errors))]
pub(crate) async fn update(
    State(state): State<AdminState>,
    ctx: Ctx,
    caller: Caller,
    Id(id): Id,
    Json(req): Json<UpdateKey>,
) -> Result<axum::Json<KeyView>, ApiError> {
    let mut key = managed(&state, &ctx, &caller, id, "key.update").await?;
    if key.revoked_at.is_some() {
        return Err(ApiError::Conflict("the key is revoked".to_owned()));
    }
    let update = ApiKeyUpdate {
        name: req
            .name
            .as_deref()
            .map(|n| validate::name("name", n))
            .transpose()
            .map_err(ApiError::BadRequest)?,
        allowed_models: req
            .allowed_models
            .as_deref()
            .map(|m| validate::model_patterns(MODELS, m))
            .transpose()
            .map_err(ApiError::BadRequest)?,
        allowed_endpoints: req
            .allowed_endpoints
            .as_deref()
            .map(|e| validate::endpoints(ENDPOINTS, e))
            .transpose()
            .map_err(ApiError::BadRequest)?,
        expires_at: match req.expires_at {
            Some(Some(t)) => Some(Some(
                validate::expiry(t, OffsetDateTime::now_utc()).map_err(ApiError::BadRequest)?,
            )),
            other => other,
        },
    };
    let target = format!("key:{id}");
    if update.name.is_some()
        || update.allowed_models.is_some()
        || update.allowed_endpoints.is_some()
        || update.expires_at.is_some()
    {
        let mut e = event(&ctx, &caller.actor(), "key.update", target.clone());
        e.details = serde_json::json!({
            "name": update.name.is_some(),
            "allowed_models": update.allowed_models,
            "allowed_endpoints": update.allowed_endpoints,
            "expires_at": update.expires_at.map(|t| t.map(|t| t.unix_timestamp())),
        });
        key = state.store().update_api_key(id, &update, Some(&e)).await?;
    }
    if let Some(enabled) = req.enabled {
        let action = if enabled { "key.enable" } else { "key.disable" };
        let e = event(&ctx, &caller.actor(), action, target);
        key = state
            .store()
            .set_api_key_enabled(id, enabled, Some(&e))
            .await?;
    }
    state.invalidate().await;
    Ok(axum::Json(key.into()))
}

/// Revoke a key for good; it stops working at once.
#[utoipa::path(post, path = "/keys/{id}/revoke", tag = "keys",
    params(("id" = Uuid, Path, description = "Key id")),
    responses((status = 200, description = "Revoked", body = KeyView), Errors))]
pub(crate) async fn revoke(
    State(state): State<AdminState>,
    ctx: Ctx,
    caller: Caller,
    Id(id): Id,
) -> Result<axum::Json<KeyView>, ApiError> {
    let key = managed(&state, &ctx, &caller, id, "key.revoke").await?;
    if key.revoked_at.is_some() {
        return Err(ApiError::Conflict("the key is already revoked".to_owned()));
    }
    let e = event(&ctx, &caller.actor(), "key.revoke", format!("key:{id}"));
    let key = state
        .store()
        .revoke_api_key(id, OffsetDateTime::now_utc(), Some(&e))
        .await?;
    state.invalidate().await;
    Ok(axum::Json(key.into()))
}

/// Replace a key by a new one; the old one keeps working for the overlap.
#[utoipa::path(post, path = "/keys/{id}/rotate", tag = "keys",
    params(("id" = Uuid, Path, description = "Key id")),
    request_body(content = Option<RotateKey>, description = "Optional"),
    responses((status = 201, description = "Rotated; `key` is shown only now", body = RotatedKey), Errors))]
pub(crate) async fn rotate(
    State(state): State<AdminState>,
    ctx: Ctx,
    caller: Caller,
    Id(id): Id,
    OptionalJson(body): OptionalJson<RotateKey>,
) -> Result<impl IntoResponse, ApiError> {
    let key = managed(&state, &ctx, &caller, id, "key.rotate").await?;
    if key.revoked_at.is_some() {
        return Err(ApiError::Conflict("the key is revoked".to_owned()));
    }
    let overlap = body
        .and_then(|b| b.overlap_seconds)
        .unwrap_or(DEFAULT_OVERLAP_SECS);
    if overlap > MAX_OVERLAP_SECS {
        return Err(ApiError::bad(format!(
            "overlap_seconds must be at most {MAX_OVERLAP_SECS}"
        )));
    }
    let new = state.hasher().generate(&state.settings().key_env);
    let mut e = event(&ctx, &caller.actor(), "key.rotate", format!("key:{id}"));
    e.details = serde_json::json!({"new_prefix": new.prefix, "overlap_seconds": overlap});
    let (fresh, old) = state
        .store()
        .rotate_api_key(
            id,
            &new.prefix,
            &new.digest.0,
            time::Duration::seconds(i64::try_from(overlap).unwrap_or(0)),
            OffsetDateTime::now_utc(),
            Some(&e),
        )
        .await
        .map_err(|err| match err {
            StoreError::Invalid(_) => ApiError::Conflict("the key cannot be rotated".to_owned()),
            other => other.into(),
        })?;
    state.invalidate().await;
    Ok((
        StatusCode::CREATED,
        axum::Json(RotatedKey {
            key: new.key.expose().to_owned(),
            record: fresh.into(),
            previous: old.into(),
        }),
    ))
}
