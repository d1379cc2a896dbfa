//! Teams: admins create and change them; members read their own.

use axum::extract::State;
use axum::response::IntoResponse;
use http::StatusCode;
use rampart_store::{Role, StoreError, Team};
use uuid::Uuid;

use super::{audited, event};
use crate::AdminState;
use crate::error::{ApiError, Errors};
use crate::http::{Ctx, Id, Json};
use crate::session::Caller;
use crate::validate;
use crate::views::{CreateTeam, List, TeamView, UpdateTeam};

fn may_read_teams(caller: &Caller) -> Result<(), ApiError> {
    if caller.role() == Role::Auditor {
        Err(ApiError::Forbidden("auditors may read the audit log only"))
    } else {
        Ok(())
    }
}

pub(super) async fn visible(
    state: &AdminState,
    caller: &Caller,
    id: Uuid,
) -> Result<Team, ApiError> {
    may_read_teams(caller)?;
    if !caller.is_admin() && caller.team() != Some(id) {
        return Err(ApiError::NotFound("team"));
    }
    match state.store().get_team(id).await {
        Ok(t) => Ok(t),
        Err(StoreError::NotFound) => Err(ApiError::NotFound("team")),
        Err(e) => Err(e.into()),
    }
}

fn name_conflict(err: StoreError) -> ApiError {
    match err {
        StoreError::Conflict { .. } => ApiError::Conflict("team name already in use".to_owned()),
        other => other.into(),
    }
}

/// List teams (admins: all; others: their own).
#[utoipa::path(get, path = "/teams", tag = "teams",
    responses((status = 200, description = "Teams", body = List<TeamView>), Errors))]
pub(crate) async fn list(
    State(state): State<AdminState>,
    caller: Caller,
) -> Result<axum::Json<List<TeamView>>, ApiError> {
    may_read_teams(&caller)?;
    let teams = if caller.is_admin() {
        state.store().list_teams().await?
    } else {
        match caller.team() {
            Some(t) => match state.store().get_team(t).await {
                Ok(team) => vec![team],
                Err(StoreError::NotFound) => vec![],
                Err(e) => return Err(e.into()),
            },
            None => vec![],
        }
    };
    Ok(axum::Json(List {
        data: teams.into_iter().map(TeamView::from).collect(),
    }))
}

/// Create a team (admins).
#[utoipa::path(post, path = "/teams", tag = "teams", request_body = CreateTeam,
    responses((status = 201, description = "Created", body = TeamView), Errors))]
pub(crate) async fn create(
    State(state): State<AdminState>,
    ctx: Ctx,
    caller: Caller,
    Json(req): Json<CreateTeam>,
) -> Result<impl IntoResponse, ApiError> {
    let allowed = if caller.is_admin() {
        Ok(())
    } else {
        Err(ApiError::Forbidden("only admins may create teams"))
    };
    audited(
        &state,
        &ctx,
        &caller.actor(),
        "team.create",
        "team".to_owned(),
        allowed,
    )
    .await?;
    let name = validate::name("name", &req.name).map_err(ApiError::BadRequest)?;
    let e = event(&ctx, &caller.actor(), "team.create", format!("team:{name}"));
    let team = state
        .store()
        .create_team(&name, Some(&e))
        .await
        .map_err(name_conflict)?;
    Ok((StatusCode::CREATED, axum::Json(TeamView::from(team))))
}

/// A team.
#[utoipa::path(get, path = "/teams/{id}", tag = "teams",
    params(("id" = Uuid, Path, description = "Team id")),
    responses((status = 200, description = "The team", body = TeamView), Errors))]
pub(crate) async fn get(
    State(state): State<AdminState>,
    caller: Caller,
    Id(id): Id,
) -> Result<axum::Json<TeamView>, ApiError> {
    Ok(axum::Json(visible(&state, &caller, id).await?.into()))
}

/// Rename, disable or enable a team (admins). A disabled team's keys stop working at once.
#[utoipa::path(patch, path = "/teams/{id}", tag = "teams",
    params(("id" = Uuid, Path, description = "Team id")),
    request_body = UpdateTeam,
    responses((status = 200, description = "Changed", body = TeamView), Errors))]
pub(crate) async fn update(
    State(state): State<AdminState>,
    ctx: Ctx,
    caller: Caller,
    Id(id): Id,
    Json(req): Json<UpdateTeam>,
) -> Result<axum::Json<TeamView>, ApiError> {
    let mut team = visible(&state, &caller, id).await?;
    let target = format!("team:{id}");
    let allowed = if caller.is_admin() {
        Ok(())
    } else {
        Err(ApiError::Forbidden("only admins may change teams"))
    };
    audited(
        &state,
        &ctx,
        &caller.actor(),
        "team.update",
        target.clone(),
        allowed,
    )
    .await?;
    let name = req
        .name
        .as_deref()
        .map(|n| validate::name("name", n))
        .transpose()
        .map_err(ApiError::BadRequest)?;
    if let Some(name) = name {
        let mut e = event(&ctx, &caller.actor(), "team.rename", target.clone());
        e.details = serde_json::json!({"name": name});
        team = state
            .store()
            .rename_team(id, &name, Some(&e))
            .await
            .map_err(name_conflict)?;
    }
    if let Some(disabled) = req.disabled {
        let action = if disabled {
            "team.disable"
        } else {
            "team.enable"
        };
        let e = event(&ctx, &caller.actor(), action, target);
        team = state
            .store()
            .set_team_disabled(id, disabled, Some(&e))
            .await?;
        state.invalidate().await;
    }
    Ok(axum::Json(team.into()))
}
