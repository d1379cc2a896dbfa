//! Rate limits and budgets of keys and teams. Who may change them: admins everywhere, team admins
//! for the keys of their own team; a team's own limits and its defaults for keys are the
//! organisation's to set (admins only). Everyone who may see a key or a team may read its
//! limits. A change applies on the serving instance before the response, and on every other
//! instance within a fraction of a second.

use axum::extract::State;
use rampart_store::{
    BudgetPeriod, BudgetSetting, LimitSettings, Role, TeamLimitSettings, field_path,
};

use super::{audited, event};
use crate::AdminState;
use crate::error::{ApiError, Errors};
use crate::http::{Ctx, Id, Json};
use crate::session::Caller;
use crate::views::{Limits, PeriodName, TeamLimits};

/// The settings of `l`, validated; `what` is where `l` sits in the request body (`team`,
/// `key_defaults`, or empty for a key's limits), so that messages name the body's real fields.
fn to_settings(l: &Limits, what: &str) -> Result<LimitSettings, ApiError> {
    let budget = match (l.budget_micros, l.budget_period) {
        (Some(micros), Some(period)) => Some(BudgetSetting {
            micros,
            period: match period {
                PeriodName::Day => BudgetPeriod::Day,
                PeriodName::Month => BudgetPeriod::Month,
            },
        }),
        (None, None) => None,
        _ => {
            return Err(ApiError::bad(format!(
                "{} and {} go together",
                field_path(what, "budget_micros"),
                field_path(what, "budget_period")
            )));
        }
    };
    let settings = LimitSettings {
        rpm: l.rpm,
        itpm: l.itpm,
        otpm: l.otpm,
        concurrency: l.concurrency,
        budget,
    };
    settings.validate(what)?;
    Ok(settings)
}

fn to_view(s: LimitSettings) -> Limits {
    Limits {
        rpm: s.rpm,
        itpm: s.itpm,
        otpm: s.otpm,
        concurrency: s.concurrency,
        budget_micros: s.budget.map(|b| b.micros),
        budget_period: s.budget.map(|b| match b.period {
            BudgetPeriod::Day => PeriodName::Day,
            BudgetPeriod::Month => PeriodName::Month,
        }),
    }
}

/// A key's own limits (unset ones fall back to its team's defaults for keys).
#[utoipa::path(get, path = "/keys/{id}/limits", tag = "limits",
    params(("id" = Uuid, Path, description = "Key id")),
    responses((status = 200, description = "The key's own limits", body = Limits), Errors))]
pub(crate) async fn get_key(
    State(state): State<AdminState>,
    caller: Caller,
    Id(id): Id,
) -> Result<axum::Json<Limits>, ApiError> {
    let key = super::keys::visible(&state, &caller, id).await?;
    Ok(axum::Json(to_view(
        state.store().limits().key_limits(key.id).await?,
    )))
}

/// Replace a key's own limits (an empty object removes them). Admins, and team admins for
/// their team's keys.
#[utoipa::path(put, path = "/keys/{id}/limits", tag = "limits",
    params(("id" = Uuid, Path, description = "Key id")),
    request_body = Limits,
    responses((status = 200, description = "The key's new limits", body = Limits), Errors))]
pub(crate) async fn put_key(
    State(state): State<AdminState>,
    ctx: Ctx,
    caller: Caller,
    Id(id): Id,
    Json(req): Json<Limits>,
) -> Result<axum::Json<Limits>, ApiError> {
    let key = super::keys::visible(&state, &caller, id).await?;
    let target = format!("key:{id}");
    let allowed = match caller.role() {
        Role::Admin => Ok(()),
        Role::TeamAdmin if caller.team() == Some(key.team_id) => Ok(()),
        _ => Err(ApiError::Forbidden(
            "only admins and the key's team admins may change its limits",
        )),
    };
    audited(
        &state,
        &ctx,
        &caller.actor(),
        "key.limits",
        target.clone(),
        allowed,
    )
    .await?;
    let settings = to_settings(&req, "")?;
    let mut e = event(&ctx, &caller.actor(), "key.limits", target);
    e.details = serde_json::json!({ "limits": settings });
    let saved = state
        .store()
        .limits()
        .set_key_limits(id, &settings, Some(&e))
        .await?;
    state.invalidate().await;
    Ok(axum::Json(to_view(saved)))
}

/// A team's limits: on the team as a whole, and the defaults for each of its keys.
#[utoipa::path(get, path = "/teams/{id}/limits", tag = "limits",
    params(("id" = Uuid, Path, description = "Team id")),
    responses((status = 200, description = "The team's limits", body = TeamLimits), Errors))]
pub(crate) async fn get_team(
    State(state): State<AdminState>,
    caller: Caller,
    Id(id): Id,
) -> Result<axum::Json<TeamLimits>, ApiError> {
    let team = super::teams::visible(&state, &caller, id).await?;
    let l = state.store().limits().team_limits(team.id).await?;
    Ok(axum::Json(TeamLimits {
        team: to_view(l.team),
        key_defaults: to_view(l.key_defaults),
    }))
}

/// Replace a team's limits and its defaults for keys (admins).
#[utoipa::path(put, path = "/teams/{id}/limits", tag = "limits",
    params(("id" = Uuid, Path, description = "Team id")),
    request_body = TeamLimits,
    responses((status = 200, description = "The team's new limits", body = TeamLimits), Errors))]
pub(crate) async fn put_team(
    State(state): State<AdminState>,
    ctx: Ctx,
    caller: Caller,
    Id(id): Id,
    Json(req): Json<TeamLimits>,
) -> Result<axum::Json<TeamLimits>, ApiError> {
    let team = super::teams::visible(&state, &caller, id).await?;
    let target = format!("team:{}", team.id);
    let allowed = if caller.is_admin() {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "only admins may change a team's limits",
        ))
    };
    audited(
        &state,
        &ctx,
        &caller.actor(),
        "team.limits",
        target.clone(),
        allowed,
    )
    .await?;
    let settings = TeamLimitSettings {
        team: to_settings(&req.team, "team")?,
        key_defaults: to_settings(&req.key_defaults, "key_defaults")?,
    };
    let mut e = event(&ctx, &caller.actor(), "team.limits", target);
    e.details = serde_json::json!({ "limits": settings });
    let saved = state
        .store()
        .limits()
        .set_team_limits(team.id, &settings, Some(&e))
        .await?;
    state.invalidate().await;
    Ok(axum::Json(TeamLimits {
        team: to_view(saved.team),
        key_defaults: to_view(saved.key_defaults),
    }))
}
