//! `rampart upstreams add|list|remove`: upstream (Anthropic) API keys kept in the store, encrypted
//! with AES-256-GCM under `RAMPART_MASTER_KEY` and bound to their name. The key is read from
//! standard input (or `RAMPART_NEW_UPSTREAM_KEY`), never from the command line, and only a hint
//! such as `sk-ant-…wxyz` is ever printed. A running `rampart serve` that takes its upstream key
//! from the store picks up a change within about a second. Changes are audited (`cli:<OS user>`).

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Subcommand;
use rampart_admin::validate;
use rampart_crypto::Secret;
use rampart_crypto::envelope::MasterKeys;
use rampart_gateway::config::Settings;
use rampart_gateway::upstream_key::{self, StoredUpstream};
use rampart_store::{NewAuditEvent, StoreError};

use crate::cli::MigrateArgs;
use crate::people::{actor, existing, opened};

/// Env var an upstream key may be given in instead of stdin.
pub const NEW_UPSTREAM_KEY_ENV: &str = "RAMPART_NEW_UPSTREAM_KEY";

/// `rampart upstreams …`
#[derive(Debug, Subcommand)]
pub enum UpstreamsCommand {
    /// Store an upstream API key, encrypted; the key is read from stdin (or
    /// RAMPART_NEW_UPSTREAM_KEY). Needs RAMPART_MASTER_KEY.
    Add {
        /// A unique name (`upstream.credential` selects by it).
        #[arg(long)]
        name: String,
        #[command(flatten)]
        store: MigrateArgs,
    },
    /// List stored upstream keys, masked, with the master key id each is encrypted under.
    List {
        #[command(flatten)]
        store: MigrateArgs,
    },
    /// Delete a stored upstream key.
    Remove {
        /// The credential's id (from `rampart upstreams list`).
        id: uuid::Uuid,
        #[command(flatten)]
        store: MigrateArgs,
    },
}

/// Run an `upstreams` subcommand.
pub async fn run(cmd: UpstreamsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        UpstreamsCommand::Add { name, store } => add(&name, &store).await,
        UpstreamsCommand::List { store } => list(&store).await,
        UpstreamsCommand::Remove { id, store } => remove(id, &store).await,
    }
}

/// For `rampart serve`: the stored upstream credential to use when the configuration holds no
/// upstream key, opened with `master` (the admin plane's keys) or else `RAMPART_MASTER_KEY`.
/// `None` when the configuration has a key, or every upstream target has its own.
///
/// # Errors
/// No master key (the message says what to set).
pub fn stored_upstream(
    settings: &Settings,
    master: Option<Arc<MasterKeys>>,
) -> anyhow::Result<Option<StoredUpstream>> {
    if settings.upstream_api_key.is_some() || !settings.resilience.needs_default_key() {
        return Ok(None);
    }
    let keys = match master {
        Some(keys) => keys,
        None => Arc::new(crate::secrets::master_keys().context(
            "no upstream API key: RAMPART_UPSTREAM_API_KEY (or upstream.api_key_file) is not set, \
             and a key stored with `rampart upstreams add` cannot be opened without the master key",
        )?),
    };
    Ok(Some(StoredUpstream::new(
        keys,
        settings.upstream_credential.clone(),
    )))
}

/// For `rampart serve`: the stored credentials upstream targets name (`credential = "…"`), each
/// opened with `master` or else `RAMPART_MASTER_KEY`.
///
/// # Errors
/// No master key while a target names a stored credential.
pub fn stored_targets(
    settings: &Settings,
    master: Option<Arc<MasterKeys>>,
) -> anyhow::Result<Vec<StoredUpstream>> {
    let names = settings.resilience.stored_credentials();
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let keys = match master {
        Some(keys) => keys,
        None => Arc::new(crate::secrets::master_keys().context(
            "an upstream target names a stored credential, which cannot be opened without the master key",
        )?),
    };
    Ok(names
        .into_iter()
        .map(|name| StoredUpstream::new(keys.clone(), Some(name)))
        .collect())
}

fn key_from_stdin() -> anyhow::Result<Secret> {
    if let Ok(k) = std::env::var(NEW_UPSTREAM_KEY_ENV)
        && !k.trim().is_empty()
    {
        return Ok(Secret::new(k.trim().to_owned()));
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("upstream API key (input is shown; pipe it in to hide it): ");
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("cannot read the upstream API key from stdin")?;
    // Trimmed in place: the key is not copied into another buffer that would outlive the Secret.
    line.truncate(line.trim_end().len());
    line.drain(..line.len() - line.trim_start().len());
    let key = Secret::new(line);
    if key.expose().is_empty() {
        bail!("no upstream API key given: pipe it on stdin or set {NEW_UPSTREAM_KEY_ENV}");
    }
    Ok(key)
}

async fn add(name: &str, args: &MigrateArgs) -> anyhow::Result<ExitCode> {
    let name = validate::name("--name", name).map_err(anyhow::Error::msg)?;
    let keys = crate::secrets::master_keys()?;
    let key = key_from_stdin()?;
    validate::upstream_key(&key).map_err(anyhow::Error::msg)?;
    let new = upstream_key::seal(&keys, &name, &key).map_err(anyhow::Error::msg)?;
    let mut audit = NewAuditEvent::new(actor(), "upstream.create", format!("upstream:{name}"));
    audit.details = serde_json::json!({"key_id": new.key_id});
    let store = opened(args).await?;
    let cred = store.create_upstream_credential(&new, Some(&audit)).await;
    store.close().await;
    let cred = match cred {
        Ok(c) => c,
        Err(StoreError::Conflict { .. }) => bail!("an upstream credential with this name exists"),
        Err(e) => return Err(e).context("cannot store the upstream credential"),
    };
    println!(
        "stored upstream credential {}  {}  {}  (master key {})",
        cred.id,
        cred.name,
        validate::key_hint(&key),
        cred.key_id
    );
    Ok(ExitCode::SUCCESS)
}

async fn list(args: &MigrateArgs) -> anyhow::Result<ExitCode> {
    // Without the master key the list still shows names and key ids, only not the hints.
    let keys = crate::secrets::master_keys().ok();
    let store = existing(args).await?;
    let creds = store.list_upstream_credentials().await;
    store.close().await;
    for c in creds? {
        let hint = match &keys {
            Some(keys) => upstream_key::open(keys, &c).map_or_else(
                |_| "(cannot decrypt)".to_owned(),
                |k| validate::key_hint(&k),
            ),
            None => "(set RAMPART_MASTER_KEY for the hint)".to_owned(),
        };
        println!(
            "{}  {}  {hint}  key_id={}  created={}",
            c.id,
            c.name,
            c.key_id,
            c.created_at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn remove(id: uuid::Uuid, args: &MigrateArgs) -> anyhow::Result<ExitCode> {
    let store = existing(args).await?;
    let audit = NewAuditEvent::new(actor(), "upstream.delete", format!("upstream:{id}"));
    let removed = store.delete_upstream_credential(id, Some(&audit)).await;
    store.close().await;
    match removed {
        Ok(()) => println!("removed upstream credential {id}"),
        Err(StoreError::NotFound) => bail!("no upstream credential {id}"),
        Err(e) => return Err(e).context("cannot remove the upstream credential"),
    }
    Ok(ExitCode::SUCCESS)
}
