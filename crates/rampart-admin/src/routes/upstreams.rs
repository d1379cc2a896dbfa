//! Upstream (Anthropic) credentials, admins only: encrypted with the master key before they reach
//! the store, bound to their name, and never returned (only a hint).

use axum::extract::State;
use axum::response::IntoResponse;
use http::StatusCode;
use rampart_crypto::Secret;
use rampart_crypto::envelope::Sealed;
use rampart_store::{
    NewUpstreamCredential, StoreError, UpstreamCredential, upstream_credential_aad,
};

use super::{audited, event};
use crate::AdminState;
use crate::error::{ApiError, Errors};
use crate::http::{Ctx, Id, Json};
use crate::session::Caller;
use crate::validate;
use crate::views::{CreateUpstream, List, UpstreamView};

async fn admin_only(
    state: &AdminState,
    ctx: &Ctx,
    caller: &Caller,
    action: &str,
    target: String,
) -> Result<(), ApiError> {
    let allowed = if caller.is_admin() {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "only admins may manage upstream credentials",
        ))
    };
    if action.ends_with(".read") {
        return allowed;
    }
    audited(state, ctx, &caller.actor(), action, target, allowed).await
}

fn view(state: &AdminState, c: UpstreamCredential) -> UpstreamView {
    let hint = <[u8; 12]>::try_from(c.nonce.as_slice())
        .ok()
        .and_then(|nonce| {
            state
                .master()
                .open(
                    &Sealed {
                        key_id: c.key_id.clone(),
                        nonce,
                        ciphertext: c.ciphertext.clone(),
                    },
                    &upstream_credential_aad(&c.name),
                )
                .ok()
        })
        .map_or_else(
            || "(cannot decrypt with the loaded master keys)".to_owned(),
            |k| validate::key_hint(&k),
        );
    UpstreamView {
        id: c.id,
        name: c.name,
        key_hint: hint,
        key_id: c.key_id,
        created_at: c.created_at,
        updated_at: c.updated_at,
    }
}

/// List upstream credentials (masked).
#[utoipa::path(get, path = "/upstreams", tag = "upstreams",
    responses((status = 200, description = "Credentials, masked", body = List<UpstreamView>), Errors))]
pub(crate) async fn list(
    State(state): State<AdminState>,
    ctx: Ctx,
    caller: Caller,
) -> Result<axum::Json<List<UpstreamView>>, ApiError> {
    admin_only(&state, &ctx, &caller, "upstream.read", String::new()).await?;
    let creds = state.store().list_upstream_credentials().await?;
    Ok(axum::Json(List {
        data: creds.into_iter().map(|c| view(&state, c)).collect(),
    }))
}

/// Store an upstream credential, encrypted.
#[utoipa::path(post, path = "/upstreams", tag = "upstreams", request_body = CreateUpstream,
    responses((status = 201, description = "Stored; the key is never returned", body = UpstreamView), Errors))]
pub(crate) async fn create(
    State(state): State<AdminState>,
    ctx: Ctx,
    caller: Caller,
    Json(req): Json<CreateUpstream>,
) -> Result<impl IntoResponse, ApiError> {
    admin_only(
        &state,
        &ctx,
        &caller,
        "upstream.create",
        "upstream".to_owned(),
    )
    .await?;
    let name = validate::name("name", &req.name).map_err(ApiError::BadRequest)?;
    let key = Secret::new(req.api_key);
    validate::upstream_key(&key).map_err(ApiError::BadRequest)?;
    let sealed = state
        .master()
        .seal(key.expose().as_bytes(), &upstream_credential_aad(&name))
        .map_err(|_| ApiError::Internal)?;
    let mut e = event(
        &ctx,
        &caller.actor(),
        "upstream.create",
        format!("upstream:{name}"),
    );
    e.details = serde_json::json!({"key_id": sealed.key_id});
    let cred = state
        .store()
        .create_upstream_credential(
            &NewUpstreamCredential {
                name,
                ciphertext: sealed.ciphertext,
                nonce: sealed.nonce.to_vec(),
                key_id: sealed.key_id,
            },
            Some(&e),
        )
        .await
        .map_err(|err| match err {
            StoreError::Conflict { .. } => {
                ApiError::Conflict("an upstream credential with this name exists".to_owned())
            }
            other => other.into(),
        })?;
    state.invalidate().await;
    Ok((StatusCode::CREATED, axum::Json(view(&state, cred))))
}

/// An upstream credential (masked).
#[utoipa::path(get, path = "/upstreams/{id}", tag = "upstreams",
    params(("id" = uuid::Uuid, Path, description = "Credential id")),
    responses((status = 200, description = "The credential, masked", body = UpstreamView), Errors))]
pub(crate) async fn get(
    State(state): State<AdminState>,
    ctx: Ctx,
    caller: Caller,
    Id(id): Id,
) -> Result<axum::Json<UpstreamView>, ApiError> {
    admin_only(&state, &ctx, &caller, "upstream.read", String::new()).await?;
    match state.store().get_upstream_credential(id).await {
        Ok(c) => Ok(axum::Json(view(&state, c))),
        Err(StoreError::NotFound) => Err(ApiError::NotFound("upstream credential")),
        Err(e) => Err(e.into()),
    }
}

/// Delete an upstream credential.
#[utoipa::path(delete, path = "/upstreams/{id}", tag = "upstreams",
    params(("id" = uuid::Uuid, Path, description = "Credential id")),
    responses((status = 204, description = "Deleted"), Errors))]
pub(crate) async fn delete(
    State(state): State<AdminState>,
    ctx: Ctx,
    caller: Caller,
    Id(id): Id,
) -> Result<StatusCode, ApiError> {
    let target = format!("upstream:{id}");
    admin_only(&state, &ctx, &caller, "upstream.delete", target.clone()).await?;
    let e = event(&ctx, &caller.actor(), "upstream.delete", target);
    match state.store().delete_upstream_credential(id, Some(&e)).await {
        Ok(()) => {
            state.invalidate().await;
            Ok(StatusCode::NO_CONTENT)
        }
        Err(StoreError::NotFound) => Err(ApiError::NotFound("upstream credential")),
        Err(e) => Err(e.into()),
    }
}
