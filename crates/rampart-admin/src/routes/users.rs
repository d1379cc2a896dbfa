//! Users. Admins manage everyone; team admins manage their own team's non-admin users; everyone
//! may read themselves and change their own password (with the current one).

use axum::extract::State;
use axum::response::IntoResponse;
use http::StatusCode;
use rampart_crypto::{Secret, password};
use rampart_store::{NewUser, Role, StoreError, User, UserUpdate};
use uuid::Uuid;

use super::{audited, event};
use crate::AdminState;
use crate::error::{ApiError, Errors};
use crate::http::{Ctx, Id, Json, Query};
use crate::session::Caller;
use crate::validate;
use crate::views::{CreateUser, List, UpdateUser, UserFilter, UserView};

/// Roles a team admin may hand out.
fn team_admin_may_grant(role: Role) -> bool {
    matches!(role, Role::TeamAdmin | Role::Developer | Role::Viewer)
}

/// Load a user the caller may see, or 404.
async fn visible(state: &AdminState, caller: &Caller, id: Uuid) -> Result<User, ApiError> {
    let user = match state.store().get_user(id).await {
        Ok(u) => u,
        Err(StoreError::NotFound) => return Err(ApiError::NotFound("user")),
        Err(e) => return Err(e.into()),
    };
    let ok = caller.is_admin()
        || user.id == caller.user.id
        || (caller.role() == Role::TeamAdmin
            && caller.team().is_some()
            && user.team_id == caller.team());
    if ok {
        Ok(user)
    } else {
        Err(ApiError::NotFound("user"))
    }
}

async fn hash_password(pw: String, email: String) -> Result<String, ApiError> {
    let pw = Secret::new(pw);
    tokio::task::spawn_blocking(move || validate::new_password(&pw, &email))
        .await
        .map_err(|_| ApiError::Internal)?
        .map_err(ApiError::BadRequest)
}

/// List users.
#[utoipa::path(get, path = "/users", tag = "users", params(UserFilter),
    responses((status = 200, description = "Users", body = List<UserView>), Errors))]
pub(crate) async fn list(
    State(state): State<AdminState>,
    caller: Caller,
    Query(filter): Query<UserFilter>,
) -> Result<axum::Json<List<UserView>>, ApiError> {
    let team = match caller.role() {
        Role::Admin => filter.team_id,
        Role::TeamAdmin => {
            let own = caller
                .team()
                .ok_or(ApiError::Forbidden("you have no team"))?;
            if filter.team_id.is_some_and(|t| t != own) {
                return Err(ApiError::NotFound("team"));
            }
            Some(own)
        }
        _ => return Err(ApiError::Forbidden("your role may not list users")),
    };
    let users = state.store().list_users(team).await?;
    Ok(axum::Json(List {
        data: users.into_iter().map(UserView::from).collect(),
    }))
}

/// Create a user.
#[utoipa::path(post, path = "/users", tag = "users", request_body = CreateUser,
    responses((status = 201, description = "Created", body = UserView), Errors))]
pub(crate) async fn create(
    State(state): State<AdminState>,
    ctx: Ctx,
    caller: Caller,
    Json(req): Json<CreateUser>,
) -> Result<impl IntoResponse, ApiError> {
    let role: Role = req.role.into();
    let team = match caller.role() {
        Role::Admin => Ok(req.team_id),
        Role::TeamAdmin => match caller.team() {
            None => Err(ApiError::Forbidden("you have no team")),
            Some(own) if req.team_id.is_some_and(|t| t != own) => Err(ApiError::NotFound("team")),
            Some(_) if !team_admin_may_grant(role) => Err(ApiError::Forbidden(
                "team admins may create team_admin, developer and viewer users only",
            )),
            Some(own) => Ok(Some(own)),
        },
        _ => Err(ApiError::Forbidden("your role may not create users")),
    };
    let team = audited(
        &state,
        &ctx,
        &caller.actor(),
        "user.create",
        "user".to_owned(),
        team,
    )
    .await?;
    let email = validate::email(&req.email).map_err(ApiError::BadRequest)?;
    if req.password.len() > password::MAX_LEN {
        return Err(ApiError::bad(format!(
            "password must be at most {} characters",
            password::MAX_LEN
        )));
    }
    if let Some(t) = team {
        match state.store().get_team(t).await {
            Ok(_) => {}
            Err(StoreError::NotFound) => return Err(ApiError::bad("team_id names no team")),
            Err(e) => return Err(e.into()),
        }
    }
    let password_hash = hash_password(req.password, email.clone()).await?;
    let e = event(
        &ctx,
        &caller.actor(),
        "user.create",
        format!("user:{email}"),
    );
    let user = state
        .store()
        .create_user(
            &NewUser {
                email,
                password_hash,
                role,
                team_id: team,
            },
            Some(&e),
        )
        .await
        .map_err(|err| match err {
            StoreError::Conflict { .. } => ApiError::Conflict("email already in use".to_owned()),
            other => other.into(),
        })?;
    Ok((StatusCode::CREATED, axum::Json(UserView::from(user))))
}

/// A user.
#[utoipa::path(get, path = "/users/{id}", tag = "users",
    params(("id" = Uuid, Path, description = "User id")),
    responses((status = 200, description = "The user", body = UserView), Errors))]
pub(crate) async fn get(
    State(state): State<AdminState>,
    caller: Caller,
    Id(id): Id,
) -> Result<axum::Json<UserView>, ApiError> {
    Ok(axum::Json(visible(&state, &caller, id).await?.into()))
}

/// What the caller may change about `target`.
fn check_update(caller: &Caller, target: &User, req: &UpdateUser) -> Result<(), ApiError> {
    let is_self = target.id == caller.user.id;
    if caller.is_admin() {
        if is_self
            && (req.disabled == Some(true)
                || req.role.is_some_and(|r| Role::from(r) != Role::Admin))
        {
            return Err(ApiError::Conflict(
                "you cannot disable or demote yourself".to_owned(),
            ));
        }
        return Ok(());
    }
    let manages = caller.role() == Role::TeamAdmin
        && caller.team().is_some()
        && target.team_id == caller.team();
    if manages {
        if matches!(target.role, Role::Admin | Role::Auditor) {
            return Err(ApiError::Forbidden(
                "team admins may not change admin or auditor users",
            ));
        }
        if req.team_id.is_some() {
            return Err(ApiError::Forbidden(
                "team admins may not move users between teams",
            ));
        }
        if req.role.is_some_and(|r| !team_admin_may_grant(r.into())) {
            return Err(ApiError::Forbidden(
                "team admins may grant team_admin, developer and viewer only",
            ));
        }
        if is_self && req.disabled == Some(true) {
            return Err(ApiError::Conflict("you cannot disable yourself".to_owned()));
        }
        return Ok(());
    }
    // Everyone else: only their own password.
    if req.email.is_some() || req.role.is_some() || req.team_id.is_some() || req.disabled.is_some()
    {
        return Err(ApiError::Forbidden("you may change only your own password"));
    }
    Ok(())
}

/// Change a user.
#[utoipa::path(patch, path = "/users/{id}", tag = "users",
    params(("id" = Uuid, Path, description = "User id")),
    request_body = UpdateUser,
    responses((status = 200, description = "Changed", body = UserView), Errors))]
pub(crate) async fn update(
    State(state): State<AdminState>,
    ctx: Ctx,
    caller: Caller,
    Id(id): Id,
    Json(req): Json<UpdateUser>,
) -> Result<axum::Json<UserView>, ApiError> {
    let target = visible(&state, &caller, id).await?;
    let target_name = format!("user:{}", target.id);
    audited(
        &state,
        &ctx,
        &caller.actor(),
        "user.update",
        target_name.clone(),
        check_update(&caller, &target, &req),
    )
    .await?;
    let email = req
        .email
        .as_deref()
        .map(validate::email)
        .transpose()
        .map_err(ApiError::BadRequest)?;
    if let Some(Some(team)) = req.team_id {
        match state.store().get_team(team).await {
            Ok(_) => {}
            Err(StoreError::NotFound) => return Err(ApiError::bad("team_id names no team")),
            Err(e) => return Err(e.into()),
        }
    }
    let password_hash = match req.password {
        Some(pw) => {
            // Changing your own password needs the current one, admins included: a stolen
            // access token must not be enough to take the account over.
            let own_change = target.id == caller.user.id;
            if own_change {
                let current = Secret::new(req.current_password.clone().unwrap_or_default());
                let phc = target.password_hash.clone();
                let ok = tokio::task::spawn_blocking(move || password::verify(&current, &phc))
                    .await
                    .unwrap_or(false);
                if !ok {
                    return Err(ApiError::bad("current_password is missing or wrong"));
                }
            }
            if pw.len() > password::MAX_LEN {
                return Err(ApiError::bad(format!(
                    "password must be at most {} characters",
                    password::MAX_LEN
                )));
            }
            let for_email = email.clone().unwrap_or_else(|| target.email.clone());
            Some(hash_password(pw, for_email).await?)
        }
        None => None,
    };
    let changed_password = password_hash.is_some();
    let update = UserUpdate {
        email,
        password_hash,
        role: req.role.map(Role::from),
        team_id: req.team_id,
    };
    let mut e = event(&ctx, &caller.actor(), "user.update", target_name.clone());
    e.details = serde_json::json!({
        "email": update.email.is_some(),
        "password": changed_password,
        "role": update.role.map(Role::as_str),
        "team": update.team_id.is_some(),
        "disabled": req.disabled,
    });
    let has_fields = update.email.is_some()
        || update.password_hash.is_some()
        || update.role.is_some()
        || update.team_id.is_some();
    let mut user = target;
    if has_fields {
        user = state
            .store()
            .update_user(id, &update, Some(&e))
            .await
            .map_err(|err| match err {
                StoreError::Conflict { .. } => {
                    ApiError::Conflict("email already in use".to_owned())
                }
                other => other.into(),
            })?;
    }
    if let Some(disabled) = req.disabled {
        let mut e = event(
            &ctx,
            &caller.actor(),
            if disabled {
                "user.disable"
            } else {
                "user.enable"
            },
            target_name,
        );
        e.details = serde_json::json!({});
        user = state
            .store()
            .set_user_disabled(id, disabled, Some(&e))
            .await?;
    }
    Ok(axum::Json(user.into()))
}
