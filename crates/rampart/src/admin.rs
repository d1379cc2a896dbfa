//! The admin plane inside `rampart serve` and `rampart demo`: settings from `[admin]`, the
//! identity cache the admin API invalidates after writes, the checks that refuse an unsafe
//! start, and first-start bootstrap (admin from the environment, else a one-time setup token).

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use http::HeaderValue;
use rampart_admin::{AdminSettings, AdminState, IdentityCache};
use rampart_crypto::Secret;
use rampart_crypto::apikey::KeyHasher;
use rampart_crypto::envelope::MasterKeys;
use rampart_crypto::jwt::JwtKeys;
use rampart_gateway::config::Settings;
use rampart_gateway::keydir::KeyDirectory;
use rampart_store::Store;

/// The data plane's key directory, reloaded from the store when the admin API changes a key.
#[derive(Debug)]
pub struct DirectoryCache {
    /// The directory the proxy authenticates with.
    pub directory: Arc<KeyDirectory>,
    /// Where it loads from.
    pub store: Store,
}

#[async_trait::async_trait]
impl IdentityCache for DirectoryCache {
    async fn invalidate(&self) {
        if let Err(e) = self.directory.refresh(&self.store).await {
            tracing::error!(error = %e, "key directory reload after an admin write failed; the periodic reload will retry");
        }
    }
}

/// Refuse to serve the admin plane where it would be unsafe: on a non-loopback address without
/// TLS in front, unless `admin.allow_insecure_remote` says a TLS proxy is there.
///
/// # Errors
/// A message naming the setting to change.
pub fn check_exposure(settings: &Settings) -> anyhow::Result<()> {
    if settings.admin.enabled
        && !settings.listen.ip().is_loopback()
        && !settings.admin.allow_insecure_remote
    {
        bail!(
            "the admin API would be served on {} without TLS. Bind server.listen to 127.0.0.1 and put a TLS-terminating proxy in front \
             (then set admin.allow_insecure_remote = true / RAMPART_ADMIN__ALLOW_INSECURE_REMOTE=true), or disable it with admin.enabled = false",
            settings.listen
        );
    }
    Ok(())
}

/// The admin settings from the validated configuration.
#[must_use]
pub fn admin_settings(settings: &Settings) -> AdminSettings {
    let a = &settings.admin;
    AdminSettings {
        access_ttl: Duration::from_secs(a.access_token_ttl_secs),
        refresh_ttl: Duration::from_secs(a.refresh_token_ttl_secs),
        cors_origins: a
            .cors_origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect(),
        hsts: settings
            .public_base_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://")),
        login_failures_per_account: a.login_max_failures_per_account as usize,
        login_failures_per_address: a.login_max_failures_per_address as usize,
        login_window: Duration::from_secs(a.login_window_secs),
        key_env: "live".to_owned(),
        webhook_policy: settings.webhooks.policy(),
    }
}

/// Build the admin state with `jwt` signing keys and `master` keys.
#[must_use]
pub fn state(
    settings: &Settings,
    store: Store,
    directory: Arc<KeyDirectory>,
    hasher: KeyHasher,
    jwt: JwtKeys,
    master: Arc<MasterKeys>,
) -> AdminState {
    let cache = Arc::new(DirectoryCache {
        directory,
        store: store.clone(),
    });
    AdminState::new(store, jwt, master, hasher, cache, admin_settings(settings))
}

/// JWT keys for `settings` from `RAMPART_JWT_SECRET(_FILE)`.
///
/// # Errors
/// Missing, malformed or weak.
pub fn jwt_keys(settings: &Settings) -> anyhow::Result<JwtKeys> {
    crate::secrets::jwt_keys(Duration::from_secs(settings.admin.access_token_ttl_secs))
}

/// JWT keys from a spec given directly (the demo's, kept in its data dir).
///
/// # Errors
/// Malformed or weak.
pub fn jwt_keys_from(settings: &Settings, spec: &Secret) -> anyhow::Result<JwtKeys> {
    JwtKeys::from_spec(
        spec,
        "demo JWT secret",
        crate::secrets::JWT_ISSUER,
        crate::secrets::JWT_AUDIENCE,
        Duration::from_secs(settings.admin.access_token_ttl_secs),
    )
    .map_err(anyhow::Error::msg)
}

/// First start: when the store has no users, create the first admin from `RAMPART_ADMIN_EMAIL` /
/// `RAMPART_ADMIN_PASSWORD`, or arm a one-time setup token and print it (stdout only, never the
/// log) with how to use it.
///
/// # Errors
/// A store failure or an admin from the environment that the policy refuses.
pub async fn bootstrap(store: &Store, admin: &AdminState, base_url: &str) -> anyhow::Result<()> {
    if !store.list_users(None).await?.is_empty() {
        return Ok(());
    }
    if let (Ok(email), Ok(password)) = (
        std::env::var("RAMPART_ADMIN_EMAIL"),
        std::env::var("RAMPART_ADMIN_PASSWORD"),
    ) {
        crate::bootstrap::first_admin(store, &email, &Secret::new(password), "system:env").await?;
        println!("created the first admin: {}", email.trim());
        return Ok(());
    }
    let token = rampart_crypto::token::generate("st_");
    admin.arm_setup_token(token.digest);
    println!(
        "no users yet: create the first admin with this one-time setup token (valid until used or restart):"
    );
    println!("setup token: {}", token.token.expose());
    println!(
        "  curl -s {base_url}/admin/v1/setup -H 'content-type: application/json' -d '{{\"setup_token\":\"{}\",\"email\":\"you@example.com\",\"password\":\"...\"}}'",
        token.token.expose()
    );
    tracing::warn!("no users yet: a one-time setup token was printed on standard output");
    Ok(())
}

/// The configuration facts worth auditing (never a secret: key *ids*, not keys).
fn config_facts(settings: &Settings, jwt_kids: &[&str], master_ids: &[&str]) -> serde_json::Value {
    let a = &settings.admin;
    serde_json::json!({
        "listen": settings.listen.to_string(),
        "upstream": format!("{}://{}{}", settings.upstream.scheme, settings.upstream.authority, settings.upstream.path_prefix),
        "public_base_url": settings.public_base_url,
        "max_body_bytes": settings.max_body_bytes,
        "max_batch_body_bytes": settings.max_batch_body_bytes,
        "connect_timeout_ms": settings.connect_timeout.as_millis(),
        "header_timeout_ms": settings.header_timeout.as_millis(),
        "config_client_keys": settings.keys.len(),
        "admin": {
            "enabled": a.enabled,
            "access_token_ttl_secs": a.access_token_ttl_secs,
            "refresh_token_ttl_secs": a.refresh_token_ttl_secs,
            "cors_origins": a.cors_origins,
            "allow_insecure_remote": a.allow_insecure_remote,
            "login_max_failures_per_account": a.login_max_failures_per_account,
            "login_max_failures_per_address": a.login_max_failures_per_address,
            "login_window_secs": a.login_window_secs,
        },
        "jwt_key_ids": jwt_kids,
        "master_key_ids": master_ids,
    })
}

/// Append a `config.change` audit event when the effective configuration differs from the one
/// recorded by the last start (so restarts with the same settings add nothing).
///
/// # Errors
/// A store failure.
pub async fn record_config(
    store: &Store,
    settings: &Settings,
    jwt_kids: &[&str],
    master_ids: &[&str],
) -> anyhow::Result<bool> {
    let facts = config_facts(settings, jwt_kids, master_ids);
    let last = store
        .list_audit(&rampart_store::AuditQuery {
            action: Some("config.change".to_owned()),
            newest_first: true,
            limit: 1,
            ..rampart_store::AuditQuery::default()
        })
        .await?;
    let unchanged = last.first().is_some_and(|e| {
        serde_json::from_str::<serde_json::Value>(&e.details).is_ok_and(|d| d == facts)
    });
    if unchanged {
        return Ok(false);
    }
    let mut e = rampart_store::NewAuditEvent::new("system", "config.change", "config");
    e.details = facts;
    store.append_audit(&e).await?;
    Ok(true)
}
