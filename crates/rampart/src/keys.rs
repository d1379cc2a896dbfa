//! `rampart keys create|list|revoke|rotate`: virtual API keys in the store. Keys are shown once
//! and stored only as peppered digests; a running `rampart serve` on the same store picks up
//! changes within about a second. `create` checks its inputs by the admin API's rules
//! ([`rampart_admin::validate`]), all before it writes. Every change is audited in its own
//! transaction, with the actor `cli:<OS user>`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use rampart_admin::validate;
use rampart_crypto::Secret;
use rampart_crypto::apikey::KeyHasher;
use rampart_store::limits::MAX_BUDGET_MICROS;
use rampart_store::{
    BudgetPeriod, BudgetSetting, LimitField, LimitSettings, NewApiKey, NewAuditEvent, StoreError,
    Team,
};
use time::OffsetDateTime;

use crate::cli::MigrateArgs;
use crate::people::{actor, existing, lookup_team, no_team, opened};

/// The team of keys created without `--team`.
const DEFAULT_TEAM: &str = "default";

/// `rampart keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; the key itself is printed alone on the last line, once.
    Create(CreateArgs),
    /// List keys (never the keys themselves).
    List(StoreArgs),
    /// Show a key's own limits, or replace them with the ones given (`--clear` removes them).
    Limits {
        /// The key's id (from `rampart keys list`).
        id: uuid::Uuid,
        #[command(flatten)]
        limits: LimitArgs,
        /// Remove the key's own limits (its team's defaults for keys apply).
        #[arg(long)]
        clear: bool,
        #[command(flatten)]
        store: MigrateArgs,
    },
    /// Show a key's caching policy (response cache, TTL, prompt-cache breakpoints), or change
    /// the fields given (`inherit` unsets one; `--clear` removes them all).
    CachePolicy(Box<crate::cache_policy::CachePolicyArgs>),
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
    /// Team that owns the key: its name or id (as `rampart teams list` shows). It must exist,
    /// unless --create-team is given. Without --team: the team `default`, created when missing.
    #[arg(long)]
    team: Option<String>,
    /// Create the --team (a name) when no team has it.
    #[arg(long, requires = "team")]
    create_team: bool,
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
    limits: LimitArgs,
    #[command(flatten)]
    store: MigrateArgs,
}

/// A key's own limits (unset ones fall back to its team's defaults for keys).
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Requests per minute.
    #[arg(long)]
    rpm: Option<u64>,
    /// Input tokens per minute.
    #[arg(long)]
    itpm: Option<u64>,
    /// Output tokens per minute.
    #[arg(long)]
    otpm: Option<u64>,
    /// Requests in flight at once.
    #[arg(long)]
    concurrency: Option<u64>,
    /// Spending limit per period in US dollars (e.g. 12.50); needs --budget-period.
    // A negative amount is taken as the value, so that the amount's own error is shown rather
    // than clap's "unexpected argument '-5'".
    #[arg(long, requires = "budget_period", allow_negative_numbers = true)]
    budget_usd: Option<String>,
    /// The budget's period (UTC): day or month.
    #[arg(long, value_parser = ["day", "month"], requires = "budget_usd")]
    budget_period: Option<String>,
}

impl LimitArgs {
    /// Limits given programmatically (the `--key-…` flags of `rampart teams limits`).
    pub fn new(
        rpm: Option<u64>,
        itpm: Option<u64>,
        otpm: Option<u64>,
        concurrency: Option<u64>,
        budget_usd: Option<String>,
        budget_period: Option<String>,
    ) -> Self {
        Self {
            rpm,
            itpm,
            otpm,
            concurrency,
            budget_usd,
            budget_period,
        }
    }

    /// Whether no limit is given.
    pub fn is_empty(&self) -> bool {
        self.rpm.is_none()
            && self.itpm.is_none()
            && self.otpm.is_none()
            && self.concurrency.is_none()
            && self.budget_usd.is_none()
    }

    /// The settings, validated as the store will; `flag_prefix` is what precedes the limit's
    /// name in the flags given (`--` for `--rpm`, `--key-` for `--key-rpm`), so that an
    /// error names the flag, in its own unit.
    pub fn settings(&self, flag_prefix: &str) -> anyhow::Result<LimitSettings> {
        let budget_flag = format!("{flag_prefix}budget-usd");
        let budget = match (&self.budget_usd, &self.budget_period) {
            (Some(usd), Some(period)) => Some(BudgetSetting {
                micros: usd_to_micros(usd, &budget_flag)?,
                period: period.parse::<BudgetPeriod>()?,
            }),
            _ => None,
        };
        let settings = LimitSettings {
            rpm: self.rpm,
            itpm: self.itpm,
            otpm: self.otpm,
            concurrency: self.concurrency,
            budget,
        };
        match settings.out_of_range() {
            None => Ok(settings),
            Some((LimitField::Budget, _)) => Err(budget_range(&budget_flag)),
            Some((field, max)) => Err(anyhow::anyhow!(
                "{flag_prefix}{} must be between 1 and {max}",
                field.name()
            )),
        }
    }
}

/// The budget flag's accepted range, in dollars (the store's bounds are micro-dollars).
fn budget_range(flag: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{flag} must be between {} and {} (US dollars)",
        dollars(1),
        dollars(MAX_BUDGET_MICROS)
    )
}

/// Micro-dollars as a plain dollar amount without trailing zeros: 1 → `0.000001`,
/// 12 500 000 → `12.5`.
fn dollars(micros: u64) -> String {
    let text = format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000);
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// `12.5` → 12 500 000 micro-dollars, exactly (no floating point); at most six decimals.
/// `flag` names the option in errors. The amount's range is checked by
/// [`LimitSettings::out_of_range`], except for amounts too large to count in micro-dollars.
fn usd_to_micros(usd: &str, flag: &str) -> anyhow::Result<u64> {
    let usd = usd.trim().trim_start_matches('$');
    let (whole, frac) = match usd.split_once('.') {
        Some((whole, frac)) => (whole, Some(frac)),
        None => (usd, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    anyhow::ensure!(
        digits(whole) && frac.is_none_or(|f| digits(f) && f.len() <= 6),
        "{flag} must be an amount like 12.50 (at most six decimals)"
    );
    let frac: u64 = format!("{:0<6}", frac.unwrap_or(""))
        .parse()
        .map_err(|_| budget_range(flag))?;
    whole
        .parse::<u64>()
        .ok()
        .and_then(|w| w.checked_mul(1_000_000))
        .and_then(|m| m.checked_add(frac))
        .ok_or_else(|| budget_range(flag))
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
        KeysCommand::Limits {
            id,
            limits,
            clear,
            store,
        } => key_limits(id, &limits, clear, &store).await,
        KeysCommand::CachePolicy(args) => {
            crate::cache_policy::run_key(&args).await?;
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Revoke { id, store } => revoke(id, &store).await,
        KeysCommand::Rotate {
            id,
            overlap_hours,
            store,
        } => rotate(id, overlap_hours, &store).await,
    }
}

async fn create(args: CreateArgs) -> anyhow::Result<ExitCode> {
    // The admin API's rules, so that the store never holds a key that the API would refuse.
    let name = validate::name("--name", &args.name).map_err(anyhow::Error::msg)?;
    let models = validate::model_patterns(validate::ListName::Flag("--model"), &args.models)
        .map_err(anyhow::Error::msg)?;
    let endpoints = validate::endpoints(validate::ListName::Flag("--endpoint"), &args.endpoints)
        .map_err(anyhow::Error::msg)?;
    let limits = args.limits.settings("--")?;
    let expires_at = args
        .expires_in_days
        .map(|d| expiry(d, OffsetDateTime::now_utc()))
        .transpose()?;
    // Without --team, the key goes to the team `default`, made on first use: nothing was named,
    // so nothing can be mistyped. A named team must exist unless --create-team says otherwise,
    // so that a typo or an id (which is not a name) never makes a new, unlimited team.
    let (team_ref, may_create) = match &args.team {
        Some(t) => (t.as_str(), args.create_team),
        None => (DEFAULT_TEAM, true),
    };
    // An id names an existing team; it is never the name of a new one.
    let is_id = uuid::Uuid::parse_str(team_ref).is_ok();
    let new_team_name = if may_create && !is_id {
        Some(validate::name("--team", team_ref).map_err(anyhow::Error::msg)?)
    } else {
        None
    };
    let hasher = key_hasher(&args.store.data_dir)?;
    let store = opened(&args.store).await?;
    let (team, team_created) = match (lookup_team(&store, team_ref).await?, new_team_name) {
        (Some(t), _) => (t, false),
        (None, Some(name)) => (create_team(&store, &name).await?, true),
        (None, None) if is_id => anyhow::bail!("--team: {}", no_team(team_ref)),
        (None, None) => anyhow::bail!(
            "--team: {}; create it with `rampart teams create`, or add --create-team",
            no_team(team_ref)
        ),
    };
    let new = hasher.generate("live");
    let key = store
        .limits()
        .create_api_key_with_limits(
            &NewApiKey {
                team_id: team.id,
                user_id: None,
                name,
                prefix: new.prefix.clone(),
                key_hash: new.digest.0.to_vec(),
                allowed_models: models,
                allowed_endpoints: endpoints,
                expires_at,
            },
            &limits,
            Some(&created_event(&team.id, &limits)),
        )
        .await
        .context("cannot create the key")?;
    store.close().await;
    println!(
        "created key {} ({}) for {}team {}",
        key.id,
        key.prefix,
        if team_created { "new " } else { "" },
        team.name
    );
    if !limits.is_empty() {
        println!("limits: {}", describe(&limits));
    }
    println!("store it now: it is not shown again");
    println!("{}", new.key.expose());
    Ok(ExitCode::SUCCESS)
}

/// The expiry `days` after `now`: at least a day ahead (a key that has already expired is of no
/// use) and at most the last day a date can hold (the year 9999).
fn expiry(days: u32, now: OffsetDateTime) -> anyhow::Result<OffsetDateTime> {
    let at = now.checked_add(time::Duration::days(i64::from(days)));
    match at {
        Some(at) if days >= 1 => Ok(at),
        _ => {
            let max = (time::PrimitiveDateTime::MAX.assume_utc() - now).whole_days();
            anyhow::bail!("--expires-in-days must be between 1 and {max}")
        }
    }
}

/// A new team for `rampart keys create`; one made meanwhile under the same name (another
/// `keys create` racing this one) is taken as it is.
async fn create_team(store: &rampart_store::Store, name: &str) -> anyhow::Result<Team> {
    let audit = NewAuditEvent::new(actor(), "team.create", format!("team:{name}"));
    match store.create_team(name, Some(&audit)).await {
        Ok(t) => Ok(t),
        Err(StoreError::Conflict { .. }) => lookup_team(store, name)
            .await?
            .context("the team vanished while it was being created"),
        Err(e) => Err(e.into()),
    }
}

/// The audit event of a key creation: the team, and the limits when any (never the key).
fn created_event(team: &uuid::Uuid, limits: &LimitSettings) -> NewAuditEvent {
    let mut e = NewAuditEvent::new(actor(), "key.create", format!("team:{team}"));
    if !limits.is_empty() {
        e.details = serde_json::json!({ "limits": limits });
    }
    e
}

async fn list(args: &MigrateArgs) -> anyhow::Result<ExitCode> {
    let store = existing(args).await?;
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
    let store = existing(args).await?;
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
    // The store first: a data dir without one is refused before the pepper file is made.
    let store = existing(args).await?;
    let hasher = key_hasher(&args.data_dir)?;
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

async fn key_limits(
    id: uuid::Uuid,
    args: &LimitArgs,
    clear: bool,
    store_args: &MigrateArgs,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(!clear || args.is_empty(), "--clear takes no limits with it");
    let store = existing(store_args).await?;
    let limits = if clear || !args.is_empty() {
        let settings = args.settings("--")?;
        let mut e = NewAuditEvent::new(actor(), "key.limits", format!("key:{id}"));
        e.details = serde_json::json!({ "limits": settings });
        store
            .limits()
            .set_key_limits(id, &settings, Some(&e))
            .await
            .with_context(|| format!("cannot set the limits of key {id}"))?
    } else {
        store
            .limits()
            .key_limits(id)
            .await
            .with_context(|| format!("cannot read key {id}"))?
    };
    store.close().await;
    if limits.is_empty() {
        println!("key {id}: no limits of its own (its team's defaults for keys apply)");
    } else {
        println!("key {id}: {}", describe(&limits));
    }
    Ok(ExitCode::SUCCESS)
}

/// `rpm=60 itpm=40000 budget=$12.50/day` (what is set).
pub fn describe(l: &LimitSettings) -> String {
    let mut parts = Vec::new();
    for (name, v) in [
        ("rpm", l.rpm),
        ("itpm", l.itpm),
        ("otpm", l.otpm),
        ("concurrency", l.concurrency),
    ] {
        if let Some(v) = v {
            parts.push(format!("{name}={v}"));
        }
    }
    if let Some(b) = l.budget {
        let mut usd = format!("{}.{:06}", b.micros / 1_000_000, b.micros % 1_000_000);
        while usd.ends_with('0') && usd.len() - usd.find('.').unwrap_or(0) > 3 {
            usd.pop();
        }
        parts.push(format!("budget=${usd}/{}", b.period.as_str()));
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_are_checked_not_overflowed() {
        let now = time::macros::datetime!(2026-01-01 0:00 UTC);
        assert_eq!(
            expiry(1, now).unwrap(),
            time::macros::datetime!(2026-01-02 0:00 UTC)
        );
        let last = expiry(2_912_442, now).unwrap();
        assert_eq!(last.date(), time::macros::date!(9999 - 12 - 31));
        for bad in [0, 2_912_443, u32::MAX] {
            let err = expiry(bad, now).unwrap_err().to_string();
            assert_eq!(err, "--expires-in-days must be between 1 and 2912442");
        }
    }

    #[test]
    fn dollars_become_micro_dollars_exactly() {
        let usd_to_micros = |usd| usd_to_micros(usd, "--budget-usd");
        assert_eq!(usd_to_micros("12.50").unwrap(), 12_500_000);
        assert_eq!(usd_to_micros("$0.000001").unwrap(), 1);
        assert_eq!(usd_to_micros("7").unwrap(), 7_000_000);
        for bad in [
            "",
            "1.2.3",
            "-1",
            "1e3",
            "0.0000001",
            "abc",
            "1.",
            "99999999999999999999",
        ] {
            assert!(usd_to_micros(bad).is_err(), "{bad}");
        }
    }
}
