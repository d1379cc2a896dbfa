//! Sessions: login, refresh (rotating, with reuse detection), logout, me, revocation by `jti`,
//! and the one-time first-admin setup.

use axum::extract::State;
use axum::response::IntoResponse;
use http::StatusCode;
use rampart_crypto::{Secret, password, token};
use rampart_store::{AuditOutcome, NewRefreshToken, NewUser, Role, SpendOutcome, StoreError, User};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{event, record};
use crate::AdminState;
use crate::error::{ApiError, Errors};
use crate::http::{Ctx, Json, OptionalJson};
use crate::session::Caller;
use crate::validate;
use crate::views::{
    LoginRequest, LogoutRequest, RefreshRequest, RevokeRequest, SetupRequest, TokenPair, UserView,
};

const BAD_LOGIN: &str = "invalid email or password";
const BAD_REFRESH: &str = "invalid or expired refresh token";

fn ttl_time(d: std::time::Duration) -> time::Duration {
    time::Duration::seconds(i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2))
}

/// Issue an access token and a refresh token in `family` for `user`.
async fn issue(state: &AdminState, user: User, family: Uuid) -> Result<TokenPair, ApiError> {
    let team = user.team_id.map(|t| t.to_string());
    let (access, claims) = state
        .jwt()
        .issue(&user.id.to_string(), user.role.as_str(), team.as_deref())
        .map_err(|_| ApiError::Internal)?;
    let refresh = token::generate("rt_");
    let refresh_ttl = state.settings().refresh_ttl;
    state
        .store()
        .insert_refresh_token(&NewRefreshToken {
            family_id: family,
            user_id: user.id,
            token_hash: refresh.digest.to_vec(),
            expires_at: OffsetDateTime::now_utc() + ttl_time(refresh_ttl),
        })
        .await?;
    Ok(TokenPair {
        access_token: access,
        token_type: "Bearer".to_owned(),
        expires_in: claims.exp.saturating_sub(claims.iat),
        refresh_token: refresh.token.expose().to_owned(),
        refresh_expires_in: refresh_ttl.as_secs(),
        user: user.into(),
    })
}

/// Sign in.
#[utoipa::path(post, path = "/auth/login", tag = "auth", security(()),
    request_body = LoginRequest,
    responses((status = 200, description = "Signed in", body = TokenPair), Errors))]
pub(crate) async fn login(
    State(state): State<AdminState>,
    ctx: Ctx,
    Json(req): Json<LoginRequest>,
) -> Result<axum::Json<TokenPair>, ApiError> {
    if req.email.len() > validate::MAX_EMAIL || req.password.len() > password::MAX_LEN {
        return Err(ApiError::Unauthenticated(BAD_LOGIN));
    }
    let account = req.email.trim().to_ascii_lowercase();
    let addr = ctx.client_addr.as_deref().and_then(|a| a.parse().ok());
    let actor = validate::email(&account).unwrap_or_else(|_| "unknown".to_owned());
    if let Err(retry_after) = state.limiter().check(&account, addr) {
        record(
            &state,
            &ctx,
            &actor,
            "auth.login",
            format!("user:{actor}"),
            AuditOutcome::Denied,
            serde_json::json!({"reason": "throttled"}),
        )
        .await;
        return Err(ApiError::RateLimited { retry_after });
    }
    // Something that is not an address cannot be an account: no lookup (PostgreSQL would refuse
    // a NUL byte outright), but the same hash work and the same answer as an unknown account.
    let user = if validate::email(&account).is_err() {
        None
    } else {
        match state.store().get_user_by_email(&account).await {
            Ok(u) => Some(u),
            Err(StoreError::NotFound) => None,
            Err(e) => return Err(e.into()),
        }
    };
    let pw = Secret::new(req.password);
    // Hash-verify even for unknown accounts so timing does not tell them apart.
    let phc = user.as_ref().map(|u| u.password_hash.clone());
    let verified =
        tokio::task::spawn_blocking(move || password::verify_or_dummy(&pw, phc.as_deref()))
            .await
            .unwrap_or(false);
    let user = match user {
        Some(u) if verified && !u.disabled => u,
        _ => {
            state.limiter().fail(&account, addr);
            record(
                &state,
                &ctx,
                &actor,
                "auth.login",
                format!("user:{actor}"),
                AuditOutcome::Failure,
                serde_json::json!({"reason": "invalid credentials"}),
            )
            .await;
            return Err(ApiError::Unauthenticated(BAD_LOGIN));
        }
    };
    state.limiter().succeed(&account);
    let user_id = user.id;
    let pair = issue(&state, user, Uuid::now_v7()).await?;
    let e = event(
        &ctx,
        &format!("user:{account}"),
        "auth.login",
        format!("user:{user_id}"),
    );
    state.store().append_audit(&e).await?;
    Ok(axum::Json(pair))
}

/// Exchange a refresh token for a new pair. A spent token presented again revokes its family.
#[utoipa::path(post, path = "/auth/refresh", tag = "auth", security(()),
    request_body = RefreshRequest,
    responses((status = 200, description = "New tokens", body = TokenPair), Errors))]
pub(crate) async fn refresh(
    State(state): State<AdminState>,
    ctx: Ctx,
    Json(req): Json<RefreshRequest>,
) -> Result<axum::Json<TokenPair>, ApiError> {
    if req.refresh_token.len() > 512 {
        return Err(ApiError::Unauthenticated(BAD_REFRESH));
    }
    let digest = token::digest(&req.refresh_token);
    let now = OffsetDateTime::now_utc();
    let outcome = match state.store().spend_refresh_token(&digest, now).await {
        Ok(o) => o,
        Err(StoreError::NotFound) => return Err(ApiError::Unauthenticated(BAD_REFRESH)),
        Err(e) => return Err(e.into()),
    };
    match outcome {
        SpendOutcome::Spent(t) => {
            let user = match state.store().get_user(t.user_id).await {
                Ok(u) if !u.disabled => u,
                Ok(_) | Err(StoreError::NotFound) => {
                    return Err(ApiError::Unauthenticated(BAD_REFRESH));
                }
                Err(e) => return Err(e.into()),
            };
            Ok(axum::Json(issue(&state, user, t.family_id).await?))
        }
        SpendOutcome::AlreadySpent(t) => {
            let mut e = event(
                &ctx,
                &format!("user:{}", t.user_id),
                "auth.refresh_reuse",
                format!("session:{}", t.family_id),
            );
            e.outcome = AuditOutcome::Denied;
            e.details = serde_json::json!({"reason": "spent refresh token presented again; family revoked"});
            state
                .store()
                .revoke_refresh_family(t.family_id, now, Some(&e))
                .await?;
            Err(ApiError::Unauthenticated(BAD_REFRESH))
        }
        SpendOutcome::Revoked(_) | SpendOutcome::Expired(_) => {
            Err(ApiError::Unauthenticated(BAD_REFRESH))
        }
    }
}

/// Sign out: revoke this access token, and the refresh token's family when given.
#[utoipa::path(post, path = "/auth/logout", tag = "auth",
    request_body(content = Option<LogoutRequest>, description = "Optional"),
    responses((status = 204, description = "Signed out"), Errors))]
pub(crate) async fn logout(
    State(state): State<AdminState>,
    ctx: Ctx,
    caller: Caller,
    OptionalJson(body): OptionalJson<LogoutRequest>,
) -> Result<StatusCode, ApiError> {
    let now = OffsetDateTime::now_utc();
    let exp = OffsetDateTime::from_unix_timestamp(i64::try_from(caller.claims.exp).unwrap_or(0))
        .unwrap_or(now);
    let e = event(
        &ctx,
        &caller.actor(),
        "auth.logout",
        format!("user:{}", caller.user.id),
    );
    state
        .store()
        .revoke_jti(&caller.claims.jti, exp, Some(&e))
        .await?;
    state.revoked().insert(&caller.claims.jti, exp);
    if let Some(rt) = body
        .and_then(|b| b.refresh_token)
        .filter(|t| t.len() <= 512)
    {
        let digest = token::digest(&rt);
        if let Ok(o) = state.store().spend_refresh_token(&digest, now).await {
            let t = match o {
                SpendOutcome::Spent(t)
                | SpendOutcome::AlreadySpent(t)
                | SpendOutcome::Revoked(t)
                | SpendOutcome::Expired(t) => t,
            };
            if t.user_id == caller.user.id {
                state
                    .store()
                    .revoke_refresh_family(t.family_id, now, None)
                    .await?;
            }
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The signed-in user.
#[utoipa::path(get, path = "/auth/me", tag = "auth",
    responses((status = 200, description = "You", body = UserView), Errors))]
pub(crate) async fn me(caller: Caller) -> axum::Json<UserView> {
    axum::Json(caller.user.into())
}

/// Revoke any access token by its `jti` (admins).
#[utoipa::path(post, path = "/auth/revoke", tag = "auth",
    request_body = RevokeRequest,
    responses((status = 204, description = "Revoked"), Errors))]
pub(crate) async fn revoke(
    State(state): State<AdminState>,
    ctx: Ctx,
    caller: Caller,
    Json(req): Json<RevokeRequest>,
) -> Result<StatusCode, ApiError> {
    let jti = req.jti.trim();
    let result = if caller.is_admin() {
        Ok(())
    } else {
        Err(ApiError::Forbidden("only admins may revoke sessions"))
    };
    super::audited(
        &state,
        &ctx,
        &caller.actor(),
        "auth.revoke",
        "session".to_owned(),
        result,
    )
    .await?;
    if jti.is_empty() || jti.len() > 128 || jti.chars().any(char::is_control) {
        return Err(ApiError::bad("jti must be 1-128 printable characters"));
    }
    // A token lives at most one access TTL from now.
    let until = OffsetDateTime::now_utc()
        + ttl_time(state.settings().access_ttl)
        + time::Duration::minutes(1);
    let e = event(&ctx, &caller.actor(), "auth.revoke", format!("jti:{jti}"));
    state.store().revoke_jti(jti, until, Some(&e)).await?;
    state.revoked().insert(jti, until);
    Ok(StatusCode::NO_CONTENT)
}

/// Create the first admin with the one-time setup token printed by `rampart serve`.
#[utoipa::path(post, path = "/setup", tag = "auth", security(()),
    request_body = SetupRequest,
    responses((status = 201, description = "First admin created", body = UserView), Errors))]
pub(crate) async fn setup(
    State(state): State<AdminState>,
    ctx: Ctx,
    Json(req): Json<SetupRequest>,
) -> Result<impl IntoResponse, ApiError> {
    if !state.store().list_users(None).await?.is_empty() {
        return Err(ApiError::Conflict("setup already completed".to_owned()));
    }
    let email = validate::email(&req.email).map_err(ApiError::BadRequest)?;
    let pw = Secret::new(req.password);
    if req.setup_token.len() > 512 || !state.take_setup_token(&req.setup_token) {
        record(
            &state,
            &ctx,
            "unknown",
            "auth.setup",
            "setup".to_owned(),
            AuditOutcome::Failure,
            serde_json::json!({"reason": "invalid setup token"}),
        )
        .await;
        return Err(ApiError::Unauthenticated("invalid setup token"));
    }
    let hashed = {
        let email = email.clone();
        tokio::task::spawn_blocking(move || validate::new_password(&pw, &email))
            .await
            .map_err(|_| ApiError::Internal)?
    };
    let password_hash = match hashed {
        Ok(h) => h,
        Err(msg) => {
            state.restore_setup_token(&req.setup_token);
            return Err(ApiError::BadRequest(msg));
        }
    };
    let e = event(
        &ctx,
        "setup-token",
        "user.bootstrap",
        format!("user:{email}"),
    );
    let user = state
        .store()
        .create_user(
            &NewUser {
                email,
                password_hash,
                role: Role::Admin,
                team_id: None,
            },
            Some(&e),
        )
        .await?;
    Ok((StatusCode::CREATED, axum::Json(UserView::from(user))))
}
