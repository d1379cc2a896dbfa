//! `rampart teams limits NAME`: a team's own limits (shared by all its keys) and its defaults
//! for each key, shown or replaced in one audited write. A running `rampart serve` on the same
//! store applies a change within about 0.1 s.

use anyhow::Context;
use clap::Args;
use rampart_store::{LimitSettings, NewAuditEvent, TeamLimitSettings};

use crate::cli::MigrateArgs;
use crate::keys::{LimitArgs, describe};
use crate::people::{actor, existing, find_team};

/// `rampart teams limits` options.
#[derive(Debug, Args)]
pub struct TeamLimitsArgs {
    /// The team's name or id.
    team: String,
    /// The team's own limits, for all its keys together.
    #[command(flatten)]
    team_limits: LimitArgs,
    /// Default requests per minute of each key.
    #[arg(long)]
    key_rpm: Option<u64>,
    /// Default input tokens per minute of each key.
    #[arg(long)]
    key_itpm: Option<u64>,
    /// Default output tokens per minute of each key.
    #[arg(long)]
    key_otpm: Option<u64>,
    /// Default concurrency of each key.
    #[arg(long)]
    key_concurrency: Option<u64>,
    /// Default budget of each key in US dollars; needs --key-budget-period.
    // As --budget-usd: a negative amount gets the amount's error.
    #[arg(long, requires = "key_budget_period", allow_negative_numbers = true)]
    key_budget_usd: Option<String>,
    /// The default budget's period: day or month.
    #[arg(long, value_parser = ["day", "month"], requires = "key_budget_usd")]
    key_budget_period: Option<String>,
    /// Remove the team's limits and key defaults.
    #[arg(long)]
    clear: bool,
    #[command(flatten)]
    store: MigrateArgs,
}

impl TeamLimitsArgs {
    fn key_defaults(&self) -> LimitArgs {
        LimitArgs::new(
            self.key_rpm,
            self.key_itpm,
            self.key_otpm,
            self.key_concurrency,
            self.key_budget_usd.clone(),
            self.key_budget_period.clone(),
        )
    }
}

/// Show or replace a team's limits.
///
/// # Errors
/// A bad value, an unknown team, or a store failure.
pub async fn run(args: &TeamLimitsArgs) -> anyhow::Result<()> {
    let defaults = args.key_defaults();
    let given = !args.team_limits.is_empty() || !defaults.is_empty();
    anyhow::ensure!(!args.clear || !given, "--clear takes no limits with it");
    let store = existing(&args.store).await?;
    let team = find_team(&store, &args.team).await?;
    let limits = if args.clear || given {
        let settings = TeamLimitSettings {
            team: args.team_limits.settings("--")?,
            key_defaults: defaults.settings("--key-")?,
        };
        let mut e = NewAuditEvent::new(actor(), "team.limits", format!("team:{}", team.id));
        e.details = serde_json::json!({ "limits": settings });
        store
            .limits()
            .set_team_limits(team.id, &settings, Some(&e))
            .await
            .context("cannot set the team's limits")?
    } else {
        store.limits().team_limits(team.id).await?
    };
    store.close().await;
    let show = |l: &LimitSettings| {
        if l.is_empty() {
            "none".to_owned()
        } else {
            describe(l)
        }
    };
    println!("team {}: {}", team.name, show(&limits.team));
    println!("each key by default: {}", show(&limits.key_defaults));
    Ok(())
}
