//! The routes, their OpenAPI document, and helpers shared by the handlers.

mod audit;
mod auth;
mod cache_policy;
mod dead_letters;
mod keys;
mod limits;
mod teams;
mod upstreams;
mod usage;
mod users;
mod webhooks;

use axum::Router;
use axum::routing::any;
use rampart_store::{AuditOutcome, NewAuditEvent};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AdminState;
use crate::error::ApiError;
use crate::http::Ctx;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Rampart admin API",
        description = "Users, teams, virtual keys, upstream credentials, the audit log and usage. Contract: docs/admin-api.md.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    components(schemas(crate::error::ErrorResponse, crate::error::ErrorDetail, crate::error::ErrorKind)),
    security(("bearer" = [])),
    tags(
        (name = "auth", description = "Sessions"),
        (name = "users", description = "People"),
        (name = "teams", description = "Tenants"),
        (name = "keys", description = "Virtual API keys"),
        (name = "limits", description = "Rate limits and budgets of keys and teams"),
        (name = "caching", description = "Caching policies of keys and teams"),
        (name = "upstreams", description = "Encrypted upstream credentials"),
        (name = "audit", description = "Tamper-evident audit log"),
        (name = "usage", description = "Usage and cost from the ledger"),
        (name = "webhooks", description = "A team's webhook on batch end and its deliveries"),
        (name = "batches", description = "Dead letters of the local batch queue"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

fn api_router() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(auth::login))
        .routes(routes!(auth::refresh))
        .routes(routes!(auth::logout))
        .routes(routes!(auth::me))
        .routes(routes!(auth::revoke))
        .routes(routes!(auth::setup))
        .routes(routes!(users::list, users::create))
        .routes(routes!(users::get, users::update))
        .routes(routes!(teams::list, teams::create))
        .routes(routes!(teams::get, teams::update))
        .routes(routes!(keys::list, keys::create))
        .routes(routes!(keys::get, keys::update))
        .routes(routes!(keys::revoke))
        .routes(routes!(keys::rotate))
        .routes(routes!(limits::get_key, limits::put_key))
        .routes(routes!(limits::get_team, limits::put_team))
        .routes(routes!(cache_policy::get_key, cache_policy::put_key))
        .routes(routes!(cache_policy::get_team, cache_policy::put_team))
        .routes(routes!(upstreams::list, upstreams::create))
        .routes(routes!(upstreams::get, upstreams::delete))
        .routes(routes!(audit::list))
        .routes(routes!(audit::verify))
        .routes(routes!(usage::summary))
        .routes(routes!(webhooks::get, webhooks::put, webhooks::delete))
        .routes(routes!(webhooks::deliveries))
        .routes(routes!(dead_letters::list))
        .routes(routes!(dead_letters::get))
        .routes(routes!(dead_letters::replay))
}

fn split() -> (Router<AdminState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/admin/v1", api_router())
        .split_for_parts()
}

pub(crate) fn openapi() -> utoipa::openapi::OpenApi {
    split().1
}

pub(crate) fn router(state: AdminState) -> Router {
    let (v1, api) = split();
    let docs: Router<AdminState> =
        Router::from(utoipa_swagger_ui::SwaggerUi::new("/admin/docs").url("/openapi.json", api));
    v1.merge(docs)
        .route("/admin", any(not_found))
        .route("/admin/{*rest}", any(not_found))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::http::context,
        ))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("route")
}

/// An audit event for `action` on `target` by `actor`, with the request's address and id.
pub(crate) fn event(ctx: &Ctx, actor: &str, action: &str, target: String) -> NewAuditEvent {
    let mut e = NewAuditEvent::new(actor, action, target);
    e.client_addr.clone_from(&ctx.client_addr);
    e.request_id = Some(ctx.request_id.clone());
    e
}

/// Record a refused or failed attempt (its own row: the change it describes did not happen).
pub(crate) async fn record(
    state: &AdminState,
    ctx: &Ctx,
    actor: &str,
    action: &str,
    target: String,
    outcome: AuditOutcome,
    details: serde_json::Value,
) {
    let mut e = event(ctx, actor, action, target);
    e.outcome = outcome;
    e.details = details;
    if let Err(err) = state.store().append_audit(&e).await {
        tracing::error!(error = %err, action, "audit append failed");
    }
}

/// When `result` is a 403, record the attempt as denied; pass it through either way.
pub(crate) async fn audited<T>(
    state: &AdminState,
    ctx: &Ctx,
    actor: &str,
    action: &str,
    target: String,
    result: Result<T, ApiError>,
) -> Result<T, ApiError> {
    if let Err(ApiError::Forbidden(why)) = &result {
        record(
            state,
            ctx,
            actor,
            action,
            target,
            AuditOutcome::Denied,
            serde_json::json!({ "reason": why }),
        )
        .await;
    }
    result
}
