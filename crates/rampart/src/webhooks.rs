//! Webhooks on batch end from the command line: `rampart teams webhook set|show|remove|deliveries`
//! (store-direct like the other `rampart teams` commands, audited as `cli:<OS user>`; the signing
//! secret is sealed with `RAMPART_MASTER_KEY` and printed once), and the dispatcher task of
//! `rampart serve`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use rampart_crypto::envelope::MasterKeys;
use rampart_store::webhooks::{SealedSecret, WebhookWrite, team_webhook_aad};
use rampart_store::{NewAuditEvent, Store, StoreError};
use rampart_webhooks::{Dispatcher, UrlPolicy, WebhooksConfig};

use crate::cli::MigrateArgs;
use crate::people::{actor, existing, find_team};

/// `rampart teams webhook …`
#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Set a team's webhook URL; a new webhook (or --rotate-secret) prints its signing secret
    /// (`whsec_…`) once. Needs RAMPART_MASTER_KEY.
    Set {
        /// Team name or id.
        team: String,
        /// `https://…` (http only to a loopback host with --allow-http-loopback).
        #[arg(long)]
        url: String,
        /// Keep it but make no deliveries.
        #[arg(long)]
        disabled: bool,
        /// Make a new signing secret.
        #[arg(long)]
        rotate_secret: bool,
        /// Accept http:// to a loopback host (local receivers, tests).
        #[arg(long)]
        allow_http_loopback: bool,
        /// Accept private, loopback and link-local targets.
        #[arg(long)]
        allow_private_networks: bool,
        #[command(flatten)]
        store: MigrateArgs,
    },
    /// Show a team's webhook (never its secret).
    Show {
        /// Team name or id.
        team: String,
        #[command(flatten)]
        store: MigrateArgs,
    },
    /// Remove a team's webhook (delivery records stay).
    Remove {
        /// Team name or id.
        team: String,
        #[command(flatten)]
        store: MigrateArgs,
    },
    /// A team's delivery attempts, newest first.
    Deliveries {
        /// Team name or id.
        team: String,
        /// Only this batch.
        #[arg(long)]
        batch: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        store: MigrateArgs,
    },
}

/// Run a `teams webhook` subcommand.
pub async fn run(cmd: WebhookCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        WebhookCommand::Set {
            team,
            url,
            disabled,
            rotate_secret,
            allow_http_loopback,
            allow_private_networks,
            store,
        } => {
            let policy = UrlPolicy {
                allow_http_loopback,
                allow_private_networks,
            };
            let url = url.trim().to_owned();
            if let Err(e) = policy.check_url(&url) {
                eprintln!("rampart teams webhook set: {e}");
                return Ok(ExitCode::FAILURE);
            }
            let master = crate::secrets::master_keys()?;
            let store = existing(&store).await?;
            let team = find_team(&store, &team).await?;
            let exists = match store.webhooks().get_team_webhook(team.id).await {
                Ok(_) => true,
                Err(StoreError::NotFound) => false,
                Err(e) => return Err(e.into()),
            };
            let fresh = (rotate_secret || !exists).then(rampart_crypto::webhook::generate_secret);
            let sealed = match &fresh {
                Some(s) => {
                    let s = master
                        .seal(s.expose().as_bytes(), &team_webhook_aad(team.id))
                        .context("cannot seal the signing secret")?;
                    Some(SealedSecret {
                        ciphertext: s.ciphertext,
                        nonce: s.nonce.to_vec(),
                        key_id: s.key_id,
                    })
                }
                None => None,
            };
            let mut e =
                NewAuditEvent::new(actor(), "team.webhook.set", format!("team:{}", team.id));
            e.details = serde_json::json!({
                "url": url, "enabled": !disabled, "new_secret": fresh.is_some(),
            });
            let (saved, created) = store
                .webhooks()
                .put_team_webhook(
                    &WebhookWrite {
                        team_id: team.id,
                        url,
                        enabled: !disabled,
                        secret: sealed,
                    },
                    Some(&e),
                )
                .await?;
            store.close().await;
            println!(
                "{} webhook of team {}: {} ({})",
                if created { "created" } else { "updated" },
                team.name,
                saved.url,
                if saved.enabled { "enabled" } else { "disabled" }
            );
            if let Some(secret) = fresh {
                println!("signing secret (shown once): {}", secret.expose());
            }
        }
        WebhookCommand::Show { team, store } => {
            let store = existing(&store).await?;
            let team = find_team(&store, &team).await?;
            let w = store
                .webhooks()
                .get_team_webhook(team.id)
                .await
                .with_context(|| format!("team {} has no webhook", team.name))?;
            store.close().await;
            println!("team       {} ({})", team.name, team.id);
            println!("url        {}", w.url);
            println!("enabled    {}", w.enabled);
            println!("created_at {}", w.created_at);
            println!("updated_at {}", w.updated_at);
        }
        WebhookCommand::Remove { team, store } => {
            let store = existing(&store).await?;
            let team = find_team(&store, &team).await?;
            let e = NewAuditEvent::new(actor(), "team.webhook.delete", format!("team:{}", team.id));
            store
                .webhooks()
                .delete_team_webhook(team.id, Some(&e))
                .await
                .with_context(|| format!("team {} has no webhook", team.name))?;
            store.close().await;
            println!("removed the webhook of team {}", team.name);
        }
        WebhookCommand::Deliveries {
            team,
            batch,
            limit,
            store,
        } => {
            let store = existing(&store).await?;
            let team = find_team(&store, &team).await?;
            let rows = store
                .webhooks()
                .list_webhook_deliveries(team.id, batch.as_deref(), limit.clamp(1, 1000))
                .await?;
            store.close().await;
            println!(
                "{:<40} {:>7} {:<9} {:>6} {:<30} ERROR",
                "BATCH", "ATTEMPT", "DELIVERED", "STATUS", "ATTEMPTED_AT"
            );
            for d in rows {
                println!(
                    "{:<40} {:>7} {:<9} {:>6} {:<30} {}",
                    d.batch_id,
                    d.attempt,
                    d.delivered,
                    d.status_code
                        .map_or_else(|| "-".to_owned(), |s| s.to_string()),
                    d.attempted_at.to_string(),
                    d.error.unwrap_or_default()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The running dispatcher of `rampart serve`.
#[derive(Debug)]
pub struct DispatcherTask {
    task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
    grace: Duration,
}

impl DispatcherTask {
    /// Stop polling; a poll under way finishes (within the per-attempt timeout) first.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(self.grace, &mut task).await.is_err() {
            tracing::warn!(
                "webhook dispatcher did not stop in time; its attempts' leases will run out"
            );
            task.abort();
        }
    }
}

/// Start the webhook dispatcher of `rampart serve` (when `[webhooks] enabled`); `base_url` is
/// where clients reach this gateway (results URLs in the events).
pub fn spawn_dispatcher(
    config: &WebhooksConfig,
    store: &Store,
    master: Arc<MasterKeys>,
    base_url: String,
) -> Option<DispatcherTask> {
    if !config.enabled {
        return None;
    }
    let dispatcher = Dispatcher::new(store.clone(), master, config.clone(), base_url);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(dispatcher.run(async {
        let _ = stopped.await;
    }));
    Some(DispatcherTask {
        task,
        stop,
        grace: Duration::from_millis(config.timeout_ms) + Duration::from_secs(1),
    })
}
