//! The audit log, for admins and auditors: pages of events and a whole-chain check.

use axum::extract::State;
use rampart_store::{AuditQuery, Role};

use crate::AdminState;
use crate::error::{ApiError, Errors};
use crate::http::Query;
use crate::session::Caller;
use crate::views::{AuditPage, AuditParams, AuditVerification, AuditView, ChainBreakView};

fn may_read(caller: &Caller) -> Result<(), ApiError> {
    if matches!(caller.role(), Role::Admin | Role::Auditor) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "only admins and auditors may read the audit log",
        ))
    }
}

/// A page of audit events, oldest first.
#[utoipa::path(get, path = "/audit", tag = "audit", params(AuditParams),
    responses((status = 200, description = "Events", body = AuditPage), Errors))]
pub(crate) async fn list(
    State(state): State<AdminState>,
    caller: Caller,
    Query(params): Query<AuditParams>,
) -> Result<axum::Json<AuditPage>, ApiError> {
    may_read(&caller)?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad("limit must be between 1 and 1000"));
    }
    if params.after_seq.is_some_and(|s| s < 0) {
        return Err(ApiError::bad("after_seq must not be negative"));
    }
    // One more than asked tells whether another page follows.
    let mut events = state
        .store()
        .list_audit(&AuditQuery {
            cursor: params.after_seq,
            limit: limit + 1,
            ..AuditQuery::default()
        })
        .await?;
    let has_more = events.len() > limit as usize;
    events.truncate(limit as usize);
    let last_seq = events.last().map(|e| e.seq);
    Ok(axum::Json(AuditPage {
        data: events.into_iter().map(AuditView::from).collect(),
        has_more,
        last_seq,
    }))
}

/// Check the whole hash chain.
#[utoipa::path(get, path = "/audit/verify", tag = "audit",
    responses((status = 200, description = "Result", body = AuditVerification), Errors))]
pub(crate) async fn verify(
    State(state): State<AdminState>,
    caller: Caller,
) -> Result<axum::Json<AuditVerification>, ApiError> {
    may_read(&caller)?;
    let head = state.store().audit_head().await?;
    let broken = state.store().verify_audit_chain().await?;
    Ok(axum::Json(AuditVerification {
        ok: broken.is_none(),
        checked: head.map_or(0, |h| h.0),
        first_break: broken.map(|b| ChainBreakView {
            seq: b.seq,
            reason: b.to_string(),
        }),
    }))
}
