//! Dead letters of the local batch queue: items that ran out of attempts on retryable failures,
//! kept with their last error. Admins see and replay every team's; team admins their own team's
//! (another team's is 404, as if it did not exist); other roles are refused. A replay queues the
//! item again with its attempts starting over, audited in the same transaction.

use axum::extract::State;
use rampart_store::Role;
use rampart_store::batches::{DeadLetter, DeadLetterQuery};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{audited, event};
use crate::AdminState;
use crate::error::{ApiError, Errors};
use crate::http::{Ctx, Id, Query};
use crate::session::Caller;

/// One dead letter.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeadLetterView {
    /// Its id.
    pub id: Uuid,
    /// The batch (`msgbatch_…`).
    pub batch_id: String,
    /// The item's position in the batch (0-based).
    pub item_index: u64,
    /// The item's `custom_id`.
    pub custom_id: String,
    /// The batch's team.
    pub team_id: Option<Uuid>,
    /// The key that created the batch.
    pub key_id: Option<Uuid>,
    /// Attempts made before it was given up.
    pub attempts: u32,
    /// The last upstream status, if an answer came.
    pub last_status: Option<u16>,
    /// The last error, in Anthropic's envelope (`{"type":"error","error":{…}}`).
    #[schema(value_type = Object)]
    pub last_error: serde_json::Value,
    /// When it was dead-lettered.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it was last replayed.
    #[serde(with = "time::serde::rfc3339::option")]
    pub replayed_at: Option<OffsetDateTime>,
    /// How often it was replayed.
    pub replay_count: u32,
}

impl From<DeadLetter> for DeadLetterView {
    fn from(d: DeadLetter) -> Self {
        Self {
            id: d.id,
            batch_id: d.batch_id,
            item_index: d.idx,
            custom_id: d.custom_id,
            team_id: d.team_id,
            key_id: d.key_id,
            attempts: d.attempts,
            last_status: d.last_status,
            last_error: serde_json::from_str(&d.last_error)
                .unwrap_or(serde_json::Value::String(d.last_error)),
            created_at: d.created_at,
            replayed_at: d.replayed_at,
            replay_count: d.replay_count,
        }
    }
}

/// A page of dead letters, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeadLetterPage {
    /// The dead letters.
    pub data: Vec<DeadLetterView>,
    /// Whether more follow `last_id`.
    pub has_more: bool,
    /// The last id on this page (pass it as `after`), or null for an empty page.
    pub last_id: Option<Uuid>,
}

/// `GET /dead-letters` filters.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeadLetterParams {
    /// Only this batch's.
    pub batch_id: Option<String>,
    /// Only this team's (team admins: their own).
    pub team_id: Option<Uuid>,
    /// After this id (the previous page's `last_id`).
    pub after: Option<Uuid>,
    /// At most this many (1–1000, default 100).
    pub limit: Option<u32>,
}

/// The team whose dead letters `caller` may see: `None` for every team (admins).
fn scope(caller: &Caller) -> Result<Option<Uuid>, ApiError> {
    match (caller.role(), caller.team()) {
        (Role::Admin, _) => Ok(None),
        (Role::TeamAdmin, Some(team)) => Ok(Some(team)),
        _ => Err(ApiError::Forbidden(
            "only admins and team admins may see the batch dead letters",
        )),
    }
}

/// A dead letter `caller` may see (404 otherwise).
async fn visible(state: &AdminState, caller: &Caller, id: Uuid) -> Result<DeadLetter, ApiError> {
    let only = scope(caller)?;
    let d = state
        .store()
        .batches()
        .get_dead_letter(id)
        .await
        .map_err(|e| match e {
            rampart_store::StoreError::NotFound => ApiError::NotFound("dead letter"),
            other => other.into(),
        })?;
    match only {
        Some(team) if d.team_id != Some(team) => Err(ApiError::NotFound("dead letter")),
        _ => Ok(d),
    }
}

/// A page of dead letters, oldest first, narrowed by batch or team.
#[utoipa::path(get, path = "/dead-letters", tag = "batches", params(DeadLetterParams),
    responses((status = 200, description = "Dead letters", body = DeadLetterPage), Errors))]
pub(crate) async fn list(
    State(state): State<AdminState>,
    caller: Caller,
    Query(params): Query<DeadLetterParams>,
) -> Result<axum::Json<DeadLetterPage>, ApiError> {
    let only = scope(&caller)?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad("limit must be between 1 and 1000"));
    }
    let team_id = match (only, params.team_id) {
        (Some(mine), Some(asked)) if mine != asked => return Err(ApiError::NotFound("team")),
        (Some(mine), _) => Some(mine),
        (None, asked) => asked,
    };
    let mut rows = state
        .store()
        .batches()
        .list_dead_letters(&DeadLetterQuery {
            batch_id: params.batch_id,
            team_id,
            after: params.after,
            limit: limit + 1,
        })
        .await?;
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let last_id = rows.last().map(|d| d.id);
    Ok(axum::Json(DeadLetterPage {
        data: rows.into_iter().map(DeadLetterView::from).collect(),
        has_more,
        last_id,
    }))
}

/// One dead letter.
#[utoipa::path(get, path = "/dead-letters/{id}", tag = "batches",
    params(("id" = Uuid, Path, description = "Dead letter id")),
    responses((status = 200, description = "The dead letter", body = DeadLetterView), Errors))]
pub(crate) async fn get(
    State(state): State<AdminState>,
    caller: Caller,
    Id(id): Id,
) -> Result<axum::Json<DeadLetterView>, ApiError> {
    Ok(axum::Json(visible(&state, &caller, id).await?.into()))
}

/// Queue the dead letter's item again (attempts start over); the batch counts it as errored
/// until it finishes again. 400 when the item is no longer errored (already replayed), 404 when
/// its batch is gone.
#[utoipa::path(post, path = "/dead-letters/{id}/replay", tag = "batches",
    params(("id" = Uuid, Path, description = "Dead letter id")),
    responses((status = 200, description = "The replayed dead letter", body = DeadLetterView), Errors))]
pub(crate) async fn replay(
    State(state): State<AdminState>,
    ctx: Ctx,
    caller: Caller,
    Id(id): Id,
) -> Result<axum::Json<DeadLetterView>, ApiError> {
    let target = format!("dead_letter:{id}");
    let allowed = scope(&caller).map(|_| ());
    audited(
        &state,
        &ctx,
        &caller.actor(),
        "dead_letter.replay",
        target.clone(),
        allowed,
    )
    .await?;
    let d = visible(&state, &caller, id).await?;
    let mut e = event(&ctx, &caller.actor(), "dead_letter.replay", target);
    e.details = serde_json::json!({ "batch_id": d.batch_id, "custom_id": d.custom_id });
    let replayed = state
        .store()
        .batches()
        .replay_dead_letter(id, OffsetDateTime::now_utc(), Some(&e))
        .await
        .map_err(|e| match e {
            rampart_store::StoreError::NotFound => ApiError::NotFound("batch item"),
            other => other.into(),
        })?;
    Ok(axum::Json(replayed.into()))
}
