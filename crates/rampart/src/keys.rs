//! `rampart keys create|list|revoke|rotate`: virtual API keys in the store. Keys are shown once
//! and stored only as peppered digests; a running `rampart serve` on the same store picks up
//! changes within about a second. Every change is audited in its own transaction, with the actor
//! `cli:<OS user>`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use rampart_crypto::Secret;
use rampart_crypto::apikey::KeyHasher;
use rampart_gateway::auth::Endpoint;
use rampart_store::{NewApiKey, NewAuditEvent, StoreError};
use time::OffsetDateTime;

use crate::cli::MigrateArgs;
use crate::people::{actor, opened};

/// `rampart keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; the key itself is printed alone on the last line, once.
    Create(CreateArgs),
    /// List keys (never the keys themselves).
    List(StoreArgs),
    /// Revoke a key for good.
    Revoke {
        /// The key's id (from `rampart keys list`).
        id: uuid::Uuid,
        #[command(flatten)]
        store: MigrateArgs,
    },
    /// Replace a key by a new one with the same team, scopes and expiry; the old key keeps
    /// working for the overlap. The new key is printed alone on the last line, once.
    Rotate {
        /// The key's id (from `rampart keys list`).
        id: uuid::Uuid,
        /// Hours the old key keeps working (0 = it stops now).
        #[arg(long, default_value_t = 24)]
        overlap_hours: u32,
        #[command(flatten)]
        store: MigrateArgs,
    },
}

/// Store location only.
#[derive(Debug, Args)]
pub struct StoreArgs {
    #[command(flatten)]
    store: MigrateArgs,
}

/// `rampart keys create` options.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// A label for the key.
    #[arg(long)]
    name: String,
    /// Team that owns the key (created when missing).
    #[arg(long, default_value = "default")]
    team: String,
    /// Allowed model pattern (`*` wildcard); repeat for several; none = all models.
    #[arg(long = "model")]
    models: Vec<String>,
    /// Allowed endpoint: messages, count_tokens, batches, models; repeat; none = all.
    #[arg(long = "endpoint")]
    endpoints: Vec<String>,
    /// Days until the key expires; none = no expiry.
    #[arg(long)]
    expires_in_days: Option<u32>,
    #[command(flatten)]
    store: MigrateArgs,
}

/// The key hasher: pepper from `RAMPART_KEY_PEPPER`, else from `<data dir>/key-pepper`
/// (created, mode 0600, on first use). Every instance sharing a database must use the same pepper.
///
/// # Errors
/// When neither is available or the pepper is too short.
pub fn key_hasher(data_dir: &Path) -> anyhow::Result<KeyHasher> {
    let pepper = match std::env::var("RAMPART_KEY_PEPPER") {
        Ok(p) if !p.trim().is_empty() => p.trim().to_owned(),
        _ => {
            std::fs::create_dir_all(data_dir)
                .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
            crate::secret_file::stored_key(&data_dir.join("key-pepper"), "pepper-")?
        }
    };
    KeyHasher::new(Secret::new(pepper)).map_err(anyhow::Error::msg)
}

/// Run a `keys` subcommand.
pub async fn run(cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCommand::Create(args) => create(args).await,
        KeysCommand::List(args) => list(&args.store).await,
        KeysCommand::Revoke { id, store } => revoke(id, &store).await,
        KeysCommand::Rotate {
            id,
            overlap_hours,
            store,
        } => rotate(id, overlap_hours, &store).await,
    }
}

async fn create(args: CreateArgs) -> anyhow::Result<ExitCode> {
    for e in &args.endpoints {
        anyhow::ensure!(
            Endpoint::parse(e).is_some(),
            "unknown endpoint `{e}` (messages, count_tokens, batches, models)"
        );
    }
    anyhow::ensure!(!args.name.trim().is_empty(), "--name must not be empty");
    let hasher = key_hasher(&args.store.data_dir)?;
    let store = opened(&args.store).await?;
    let team = match store
        .list_teams()
        .await?
        .into_iter()
        .find(|t| t.name == args.team)
    {
        Some(t) => t,
        None => match store
            .create_team(
                &args.team,
                Some(&NewAuditEvent::new(
                    actor(),
                    "team.create",
                    format!("team:{}", args.team),
                )),
            )
            .await
        {
            Ok(t) => t,
            Err(StoreError::Conflict { .. }) => store
                .list_teams()
                .await?
                .into_iter()
                .find(|t| t.name == args.team)
                .context("team vanished")?,
            Err(e) => return Err(e.into()),
        },
    };
    let new = hasher.generate("live");
    let expires_at = args
        .expires_in_days
        .map(|d| OffsetDateTime::now_utc() + time::Duration::days(i64::from(d)));
    let key = store
        .create_api_key(
            &NewApiKey {
                team_id: team.id,
                user_id: None,
                name: args.name.trim().to_owned(),
                prefix: new.prefix.clone(),
                key_hash: new.digest.0.to_vec(),
                allowed_models: args.models,
                allowed_endpoints: args.endpoints,
                expires_at,
            },
            Some(&NewAuditEvent::new(
                actor(),
                "key.create",
                format!("team:{}", team.id),
            )),
        )
        .await
        .context("cannot create the key")?;
    store.close().await;
    println!(
        "created key {} ({}) for team {}",
        key.id, key.prefix, team.name
    );
    println!("store it now: it is not shown again");
    println!("{}", new.key.expose());
    Ok(ExitCode::SUCCESS)
}

async fn list(args: &MigrateArgs) -> anyhow::Result<ExitCode> {
    let store = opened(args).await?;
    let teams = store.list_teams().await?;
    for k in store
        .list_api_keys(rampart_store::ApiKeyFilter::default())
        .await?
    {
        let team = teams
            .iter()
            .find(|t| t.id == k.team_id)
            .map_or("?", |t| t.name.as_str());
        let state = if k.revoked_at.is_some() {
            "revoked"
        } else if !k.enabled {
            "disabled"
        } else {
            "active"
        };
        println!(
            "{}  {}…  {state}  team={team}  name={}",
            k.id, k.prefix, k.name
        );
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

async fn revoke(id: uuid::Uuid, args: &MigrateArgs) -> anyhow::Result<ExitCode> {
    let store = opened(args).await?;
    let key = store
        .revoke_api_key(
            id,
            OffsetDateTime::now_utc(),
            Some(&NewAuditEvent::new(
                actor(),
                "key.revoke",
                format!("key:{id}"),
            )),
        )
        .await
        .with_context(|| format!("cannot revoke key {id}"))?;
    store.close().await;
    println!("revoked key {} ({})", key.id, key.prefix);
    Ok(ExitCode::SUCCESS)
}

async fn rotate(
    id: uuid::Uuid,
    overlap_hours: u32,
    args: &MigrateArgs,
) -> anyhow::Result<ExitCode> {
    let hasher = key_hasher(&args.data_dir)?;
    let store = opened(args).await?;
    let old = store
        .get_api_key(id)
        .await
        .with_context(|| format!("cannot read key {id}"))?;
    // The new key keeps the old one's environment label (`rk_live_…`, `rk_test_…`).
    let env = old
        .prefix
        .strip_prefix("rk_")
        .and_then(|rest| rest.split('_').next())
        .unwrap_or("live");
    let new = hasher.generate(env);
    let overlap = time::Duration::hours(i64::from(overlap_hours));
    let mut audit = NewAuditEvent::new(actor(), "key.rotate", format!("key:{id}"));
    audit.details = serde_json::json!({
        "new_prefix": new.prefix,
        "overlap_seconds": overlap.whole_seconds(),
    });
    let (fresh, old) = store
        .rotate_api_key(
            id,
            &new.prefix,
            &new.digest.0,
            overlap,
            OffsetDateTime::now_utc(),
            Some(&audit),
        )
        .await
        .with_context(|| format!("cannot rotate key {id}"))?;
    store.close().await;
    let until = old
        .expires_at
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "now".to_owned());
    println!(
        "rotated key {} ({}) to {} ({}); the old key works until {until}",
        old.id, old.prefix, fresh.id, fresh.prefix
    );
    println!("store it now: it is not shown again");
    println!("{}", new.key.expose());
    Ok(ExitCode::SUCCESS)
}
