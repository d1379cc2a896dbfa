//! `rampart keys cache-policy ID` and `rampart teams cache-policy NAME`: show a key's or a team's
//! caching policy, or change the fields given (`inherit` unsets one; `--clear` removes them all)
//! in one audited write. A running `rampart serve` on the same store applies a change within
//! about 0.1 s.

use anyhow::Context;
use clap::Args;
use rampart_store::{CachePolicy, NewAuditEvent, Store};

use crate::cli::MigrateArgs;
use crate::people::{actor, existing, find_team};

/// The caching-policy options shared by keys and teams.
#[derive(Debug, Args)]
pub struct CachePolicyArgs {
    /// The key's id (keys), or the team's name or id (teams).
    target: String,
    /// The response cache: on, off, or inherit.
    #[arg(long, value_parser = ["on", "off", "inherit"])]
    response: Option<String>,
    /// Lifetime of cached answers in seconds, or inherit.
    #[arg(long)]
    ttl: Option<String>,
    /// Prompt-cache breakpoints: on, off, or inherit.
    #[arg(long, value_parser = ["on", "off", "inherit"])]
    breakpoints: Option<String>,
    /// Remove the policy (everything inherits).
    #[arg(long)]
    clear: bool,
    #[command(flatten)]
    store: MigrateArgs,
}

impl CachePolicyArgs {
    fn changes(&self) -> bool {
        self.response.is_some() || self.ttl.is_some() || self.breakpoints.is_some()
    }

    /// `current` with the fields given changed.
    fn applied_to(&self, current: CachePolicy) -> anyhow::Result<CachePolicy> {
        let switch = |v: &Option<String>, was: Option<bool>| match v.as_deref() {
            Some("on") => Some(true),
            Some("off") => Some(false),
            Some(_) => None,
            None => was,
        };
        let ttl_secs = match self.ttl.as_deref() {
            None => current.ttl_secs,
            Some("inherit") => None,
            Some(v) => Some(v.parse::<u64>().ok().filter(|&t| t > 0).with_context(|| {
                format!("--ttl must be a number of seconds or `inherit`, not `{v}`")
            })?),
        };
        let policy = CachePolicy {
            response_enabled: switch(&self.response, current.response_enabled),
            ttl_secs,
            breakpoints_enabled: switch(&self.breakpoints, current.breakpoints_enabled),
        };
        policy.validate()?;
        Ok(policy)
    }
}

fn describe(p: &CachePolicy) -> String {
    let switch = |v: Option<bool>| match v {
        Some(true) => "on",
        Some(false) => "off",
        None => "inherit",
    };
    let ttl = p
        .ttl_secs
        .map_or_else(|| "inherit".to_owned(), |t| format!("{t}s"));
    format!(
        "response cache {}, ttl {ttl}, breakpoints {}",
        switch(p.response_enabled),
        switch(p.breakpoints_enabled)
    )
}

/// Show or change a key's caching policy.
///
/// # Errors
/// A bad value, an unknown key, or a store failure.
pub async fn run_key(args: &CachePolicyArgs) -> anyhow::Result<()> {
    let id: uuid::Uuid = args
        .target
        .parse()
        .with_context(|| format!("`{}` is not a key id (see rampart keys list)", args.target))?;
    let store = existing(&args.store).await?;
    let result = key(&store, id, args).await;
    store.close().await;
    println!("key {id}: {}", describe(&result?));
    Ok(())
}

async fn key(store: &Store, id: uuid::Uuid, args: &CachePolicyArgs) -> anyhow::Result<CachePolicy> {
    let repo = store.cache_policies();
    let current = repo
        .key_cache_policy(id)
        .await
        .with_context(|| format!("no key {id}"))?;
    let Some(next) = next(args, current)? else {
        return Ok(current);
    };
    let mut e = NewAuditEvent::new(actor(), "key.cache_policy", format!("key:{id}"));
    e.details = serde_json::json!({ "cache_policy": next });
    repo.set_key_cache_policy(id, &next, Some(&e))
        .await
        .context("cannot set the key's caching policy")
}

/// Show or change a team's caching policy.
///
/// # Errors
/// A bad value, an unknown team, or a store failure.
pub async fn run_team(args: &CachePolicyArgs) -> anyhow::Result<()> {
    let store = existing(&args.store).await?;
    let result = team(&store, args).await;
    store.close().await;
    let (name, policy) = result?;
    println!("team {name}: {}", describe(&policy));
    Ok(())
}

async fn team(store: &Store, args: &CachePolicyArgs) -> anyhow::Result<(String, CachePolicy)> {
    let team = find_team(store, &args.target).await?;
    let repo = store.cache_policies();
    let current = repo.team_cache_policy(team.id).await?;
    let Some(next) = next(args, current)? else {
        return Ok((team.name, current));
    };
    let mut e = NewAuditEvent::new(actor(), "team.cache_policy", format!("team:{}", team.id));
    e.details = serde_json::json!({ "cache_policy": next });
    let saved = repo
        .set_team_cache_policy(team.id, &next, Some(&e))
        .await
        .context("cannot set the team's caching policy")?;
    Ok((team.name, saved))
}

/// The policy to write, or `None` to only show the current one.
fn next(args: &CachePolicyArgs, current: CachePolicy) -> anyhow::Result<Option<CachePolicy>> {
    anyhow::ensure!(
        !args.clear || !args.changes(),
        "--clear takes no other setting with it"
    );
    if args.clear {
        return Ok(Some(CachePolicy::default()));
    }
    if !args.changes() {
        return Ok(None);
    }
    args.applied_to(current).map(Some)
}
