//! `rampart dlq list|show|replay`: the local batch queue's dead letters (items that ran out of
//! attempts on retryable failures), read from and replayed in the store directly, like `rampart
//! keys`. A replay queues the item again (attempts start over) and is audited (`cli:<OS user>`)
//! in the same transaction; a running `rampart serve` picks it up at its next claim.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use rampart_store::batches::{DeadLetter, DeadLetterQuery};
use rampart_store::{NewAuditEvent, StoreError};

use crate::cli::MigrateArgs;
use crate::people::{actor, existing};

/// `rampart dlq …`
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters, oldest first (one line each).
    List {
        /// Only this batch's.
        #[arg(long)]
        batch: Option<String>,
        /// Only this team's (its id).
        #[arg(long)]
        team: Option<uuid::Uuid>,
        /// At most this many (1–1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// JSON lines instead of the table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: MigrateArgs,
    },
    /// Show one dead letter with its last error (JSON).
    Show {
        /// The dead letter's id.
        id: uuid::Uuid,
        #[command(flatten)]
        store: MigrateArgs,
    },
    /// Queue a dead letter's item again.
    Replay {
        /// The dead letter's id.
        id: uuid::Uuid,
        #[command(flatten)]
        store: MigrateArgs,
    },
}

/// Run a `dlq` subcommand.
pub async fn run(cmd: DlqCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DlqCommand::List {
            batch,
            team,
            limit,
            json,
            store,
        } => list(batch, team, limit, json, &store).await,
        DlqCommand::Show { id, store } => show(id, &store).await,
        DlqCommand::Replay { id, store } => replay(id, &store).await,
    }
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn error_type(d: &DeadLetter) -> String {
    serde_json::from_str::<serde_json::Value>(&d.last_error)
        .ok()
        .and_then(|v| v.pointer("/error/type")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "-".to_owned())
}

async fn list(
    batch: Option<String>,
    team: Option<uuid::Uuid>,
    limit: u32,
    json: bool,
    args: &MigrateArgs,
) -> anyhow::Result<ExitCode> {
    if !(1..=1000).contains(&limit) {
        bail!("--limit must be between 1 and 1000");
    }
    let store = existing(args).await?;
    let rows = store
        .batches()
        .list_dead_letters(&DeadLetterQuery {
            batch_id: batch,
            team_id: team,
            after: None,
            limit,
        })
        .await;
    store.close().await;
    for d in rows.context("cannot list the dead letters")? {
        if json {
            println!("{}", serde_json::to_string(&d)?);
        } else {
            println!(
                "{}  {}  {}  attempts={}  status={}  {}  at={}  replays={}",
                d.id,
                d.batch_id,
                d.custom_id,
                d.attempts,
                d.last_status
                    .map_or_else(|| "-".to_owned(), |s| s.to_string()),
                error_type(&d),
                rfc3339(d.created_at),
                d.replay_count,
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(id: uuid::Uuid, args: &MigrateArgs) -> anyhow::Result<ExitCode> {
    let store = existing(args).await?;
    let d = store.batches().get_dead_letter(id).await;
    store.close().await;
    match d {
        Ok(d) => {
            let mut v = serde_json::to_value(&d)?;
            if let Ok(e) = serde_json::from_str::<serde_json::Value>(&d.last_error) {
                v["last_error"] = e;
            }
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(StoreError::NotFound) => bail!("no dead letter {id}"),
        Err(e) => Err(e).context("cannot read the dead letter"),
    }
}

async fn replay(id: uuid::Uuid, args: &MigrateArgs) -> anyhow::Result<ExitCode> {
    let store = existing(args).await?;
    let mut audit = NewAuditEvent::new(actor(), "dead_letter.replay", format!("dead_letter:{id}"));
    audit.details = serde_json::json!({ "via": "cli" });
    let done = store
        .batches()
        .replay_dead_letter(id, time::OffsetDateTime::now_utc(), Some(&audit))
        .await;
    store.close().await;
    match done {
        Ok(d) => {
            println!(
                "replayed {}: item {} of {} is queued again (replay {})",
                d.id, d.custom_id, d.batch_id, d.replay_count
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(StoreError::NotFound) => bail!("no dead letter {id} (or its batch is gone)"),
        Err(StoreError::Invalid(why)) => bail!("cannot replay {id}: {why}"),
        Err(e) => Err(e).context("cannot replay the dead letter"),
    }
}
