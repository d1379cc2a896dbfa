//! A team's webhook on batch end: set (the signing secret is shown once, when made or rotated),
//! read, remove, and its delivery attempts. Admins for any team, team admins for their own; the
//! URL must pass the webhook policy (HTTPS, no private or link-local targets unless configured).

use axum::extract::State;
use axum::response::IntoResponse;
use http::StatusCode;
use rampart_crypto::webhook;
use rampart_store::webhooks::{SealedSecret, TeamWebhook, WebhookDelivery, WebhookWrite};
use rampart_store::{Role, StoreError};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{audited, event};
use crate::AdminState;
use crate::error::{ApiError, Errors};
use crate::http::{Ctx, Id, Json, Query};
use crate::session::Caller;
use crate::views::List;

/// `PUT /teams/{id}/webhook`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetWebhook {
    /// Where deliveries go: `https://…` (see the webhook URL policy).
    pub url: String,
    /// Whether deliveries are made. Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Make a new signing secret (returned once in this answer). A new webhook always gets one.
    #[serde(default)]
    pub rotate_secret: bool,
}

fn yes() -> bool {
    true
}

/// A team's webhook.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    /// The team.
    pub team_id: Uuid,
    /// Where deliveries go.
    pub url: String,
    /// Whether deliveries are made.
    pub enabled: bool,
    /// The signing secret (`whsec_…`): only in the answer that made it; store it now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// When it was set (batches that ended before are not announced).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

/// One delivery attempt.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    /// The attempt's id.
    pub id: Uuid,
    /// The batch whose end it announces.
    pub batch_id: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The URL it went to.
    pub url: String,
    /// When it started.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub attempted_at: OffsetDateTime,
    /// When it finished (null while running).
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<OffsetDateTime>,
    /// The receiver's HTTP status.
    pub status_code: Option<u16>,
    /// Why it failed without a status.
    pub error: Option<String>,
    /// The next attempt's time (the lease while running); null when delivered or given up.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_attempt_at: Option<OffsetDateTime>,
    /// The receiver answered 2xx.
    pub delivered: bool,
}

/// `GET /teams/{id}/webhook/deliveries` filters.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeliveryParams {
    /// Only this batch's attempts.
    pub batch_id: Option<String>,
    /// At most this many (1–1000, default 100), newest first.
    pub limit: Option<u32>,
}

fn view(w: TeamWebhook, secret: Option<String>) -> WebhookView {
    WebhookView {
        team_id: w.team_id,
        url: w.url,
        enabled: w.enabled,
        secret,
        created_at: w.created_at,
        updated_at: w.updated_at,
    }
}

fn delivery(d: WebhookDelivery) -> DeliveryView {
    DeliveryView {
        id: d.id,
        batch_id: d.batch_id,
        attempt: d.attempt,
        url: d.url,
        attempted_at: d.attempted_at,
        finished_at: d.finished_at,
        status_code: d.status_code,
        error: d.error,
        next_attempt_at: d.next_attempt_at,
        delivered: d.delivered,
    }
}

/// The team, when the caller may manage its webhook: admins, and that team's team admins (404
/// for a team out of the caller's sight, 403 for other roles).
async fn managed(
    state: &AdminState,
    ctx: &Ctx,
    caller: &Caller,
    id: Uuid,
    action: &str,
) -> Result<Uuid, ApiError> {
    let team = super::teams::visible(state, caller, id).await?;
    let allowed = match caller.role() {
        Role::Admin => Ok(team.id),
        Role::TeamAdmin if caller.team() == Some(team.id) => Ok(team.id),
        _ => Err(ApiError::Forbidden(
            "only admins and the team's team admins may manage its webhook",
        )),
    };
    if action.ends_with(".read") {
        return allowed;
    }
    audited(
        state,
        ctx,
        &caller.actor(),
        action,
        format!("team:{id}"),
        allowed,
    )
    .await
}

fn no_webhook(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::NotFound("webhook"),
        other => other.into(),
    }
}

/// A team's webhook (never its secret).
#[utoipa::path(get, path = "/teams/{id}/webhook", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Team id")),
    responses((status = 200, description = "The team's webhook", body = WebhookView), Errors))]
pub(crate) async fn get(
    State(state): State<AdminState>,
    ctx: Ctx,
    caller: Caller,
    Id(id): Id,
) -> Result<axum::Json<WebhookView>, ApiError> {
    let team = managed(&state, &ctx, &caller, id, "team.webhook.read").await?;
    let w = state
        .store()
        .webhooks()
        .get_team_webhook(team)
        .await
        .map_err(no_webhook)?;
    Ok(axum::Json(view(w, None)))
}

/// Set a team's webhook. Creating one (201), or `rotate_secret`, returns the new signing secret
/// once; changing the URL or `enabled` keeps the secret (200).
#[utoipa::path(put, path = "/teams/{id}/webhook", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Team id")),
    request_body = SetWebhook,
    responses(
        (status = 201, description = "Created; `secret` is shown this once", body = WebhookView),
        (status = 200, description = "Changed (`secret` only when rotated)", body = WebhookView),
        Errors))]
pub(crate) async fn put(
    State(state): State<AdminState>,
    ctx: Ctx,
    caller: Caller,
    Id(id): Id,
    Json(req): Json<SetWebhook>,
) -> Result<impl IntoResponse, ApiError> {
    let team = managed(&state, &ctx, &caller, id, "team.webhook.set").await?;
    let url = req.url.trim().to_owned();
    state
        .settings()
        .webhook_policy
        .check_url(&url)
        .map_err(ApiError::BadRequest)?;
    let existing = match state.store().webhooks().get_team_webhook(team).await {
        Ok(_) => true,
        Err(StoreError::NotFound) => false,
        Err(e) => return Err(e.into()),
    };
    let fresh = (req.rotate_secret || !existing).then(webhook::generate_secret);
    let sealed = match &fresh {
        Some(secret) => {
            let s = state
                .master()
                .seal(
                    secret.expose().as_bytes(),
                    &rampart_store::webhooks::team_webhook_aad(team),
                )
                .map_err(|_| ApiError::Internal)?;
            Some(SealedSecret {
                ciphertext: s.ciphertext,
                nonce: s.nonce.to_vec(),
                key_id: s.key_id,
            })
        }
        None => None,
    };
    let mut e = event(
        &ctx,
        &caller.actor(),
        "team.webhook.set",
        format!("team:{team}"),
    );
    e.details = serde_json::json!({
        "url": url, "enabled": req.enabled, "new_secret": fresh.is_some(),
    });
    let (saved, created) = state
        .store()
        .webhooks()
        .put_team_webhook(
            &WebhookWrite {
                team_id: team,
                url,
                enabled: req.enabled,
                secret: sealed,
            },
            Some(&e),
        )
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let secret = fresh.map(|s| s.expose().to_owned());
    Ok((status, axum::Json(view(saved, secret))))
}

/// Remove a team's webhook (its delivery records stay).
#[utoipa::path(delete, path = "/teams/{id}/webhook", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Team id")),
    responses((status = 204, description = "Removed"), Errors))]
pub(crate) async fn delete(
    State(state): State<AdminState>,
    ctx: Ctx,
    caller: Caller,
    Id(id): Id,
) -> Result<StatusCode, ApiError> {
    let team = managed(&state, &ctx, &caller, id, "team.webhook.delete").await?;
    let e = event(
        &ctx,
        &caller.actor(),
        "team.webhook.delete",
        format!("team:{team}"),
    );
    state
        .store()
        .webhooks()
        .delete_team_webhook(team, Some(&e))
        .await
        .map_err(no_webhook)?;
    Ok(StatusCode::NO_CONTENT)
}

/// A team's webhook delivery attempts, newest first.
#[utoipa::path(get, path = "/teams/{id}/webhook/deliveries", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Team id"), DeliveryParams),
    responses((status = 200, description = "Attempts, newest first", body = List<DeliveryView>), Errors))]
pub(crate) async fn deliveries(
    State(state): State<AdminState>,
    ctx: Ctx,
    caller: Caller,
    Id(id): Id,
    Query(params): Query<DeliveryParams>,
) -> Result<axum::Json<List<DeliveryView>>, ApiError> {
    let team = managed(&state, &ctx, &caller, id, "team.webhook.read").await?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad("limit: must be between 1 and 1000"));
    }
    let rows = state
        .store()
        .webhooks()
        .list_webhook_deliveries(team, params.batch_id.as_deref(), limit)
        .await?;
    Ok(axum::Json(List {
        data: rows.into_iter().map(delivery).collect(),
    }))
}
