//! `rampart usage`: usage and cost from the ledger's rollups, as a table or as the JSON of
//! `GET /admin/v1/usage`.

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use rampart_admin::usage::{Spelling, UsageInputs, UsageReport, check_inputs};
use rampart_store::{Store, StoreError, UsageGroupBy};
use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime, Time};
use uuid::Uuid;

use crate::cli::MigrateArgs;
use crate::people::existing;

/// `rampart usage` options.
#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Start: RFC 3339 or a UTC day (YYYY-MM-DD); rounded down to the hour. Default: 30 days
    /// before --to.
    #[arg(long)]
    from: Option<String>,
    /// End (exclusive): RFC 3339 or a UTC day (that day's start); rounded up to the hour.
    /// Default: now.
    #[arg(long)]
    to: Option<String>,
    /// Group by any of key, team, model, day (comma-separated); none gives one total.
    #[arg(long, value_name = "DIMS")]
    group_by: Option<String>,
    /// Only this key (its id).
    #[arg(long, value_name = "ID")]
    key: Option<Uuid>,
    /// Only this team (name or id).
    #[arg(long)]
    team: Option<String>,
    /// Only this model.
    #[arg(long)]
    model: Option<String>,
    /// Print the JSON report (as `GET /admin/v1/usage`) instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: MigrateArgs,
}

/// A time argument: RFC 3339, or a day meaning its start (UTC). An error names `flag`, says why
/// once and what is accepted.
fn instant(flag: &str, text: &str) -> anyhow::Result<OffsetDateTime> {
    let rfc3339 = match OffsetDateTime::parse(text, &Rfc3339) {
        Ok(t) => return Ok(t),
        Err(e) => e,
    };
    let day = Date::parse(
        text,
        time::macros::format_description!("[year]-[month]-[day]"),
    );
    let why = match day {
        Ok(day) => return Ok(day.with_time(Time::MIDNIGHT).assume_utc()),
        // The reason of the format the text looks like; `time`'s errors repeat their cause in
        // their source, so only their own text is shown (no chain).
        Err(e) if !text.contains(['T', 't', ' ']) => e.to_string(),
        Err(_) => rfc3339.to_string(),
    };
    let shown: String = text.chars().take(40).collect();
    bail!(
        "{flag}: `{shown}` is not a time ({why}); expected RFC 3339 (2026-06-01T09:30:00Z) or a UTC day (2026-06-01)"
    )
}

/// Run `rampart usage`.
///
/// # Errors
/// Bad arguments (refused as `GET /admin/v1/usage` refuses them), an unknown key or team, or a
/// store failure.
pub async fn run(args: UsageArgs) -> anyhow::Result<ExitCode> {
    let from = args
        .from
        .as_deref()
        .map(|f| instant("--from", f))
        .transpose()?;
    let to = args.to.as_deref().map(|t| instant("--to", t)).transpose()?;
    let inputs = UsageInputs {
        from,
        to,
        group_by: args.group_by.as_deref(),
        model: args.model.as_deref(),
    };
    let mut query = check_inputs(&inputs, OffsetDateTime::now_utc(), Spelling::Cli)
        .map_err(anyhow::Error::msg)?;
    let group_by = query.group_by;
    let store = existing(&args.store).await?;
    let names = Names::load(&store).await?;
    if let Some(t) = &args.team {
        query.team_id = Some(names.team(t).with_context(|| format!("no team `{t}`"))?);
    }
    if let Some(id) = args.key {
        match store.get_api_key(id).await {
            Ok(_) => query.key_id = Some(id),
            Err(StoreError::NotFound) => bail!("no key `{id}`"),
            Err(e) => return Err(anyhow::Error::new(e).context("cannot look up --key")),
        }
    }
    let rows = store.usage().usage_summary(&query).await?;
    store.close().await;
    let report = UsageReport::new(&query, rows);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report, group_by, &names));
    }
    Ok(ExitCode::SUCCESS)
}

/// Team and key names, to show instead of ids.
struct Names {
    teams: HashMap<Uuid, String>,
    keys: HashMap<Uuid, String>,
}

impl Names {
    async fn load(store: &Store) -> anyhow::Result<Names> {
        let teams = store.list_teams().await?;
        let keys = store
            .list_api_keys(rampart_store::ApiKeyFilter::default())
            .await?;
        Ok(Names {
            teams: teams.into_iter().map(|t| (t.id, t.name)).collect(),
            keys: keys
                .into_iter()
                .map(|k| (k.id, format!("{} ({}…)", k.name, k.prefix)))
                .collect(),
        })
    }

    fn team(&self, name_or_id: &str) -> Option<Uuid> {
        self.teams
            .iter()
            .find(|(_, n)| n.as_str() == name_or_id)
            .map(|(id, _)| *id)
            .or_else(|| {
                Uuid::parse_str(name_or_id)
                    .ok()
                    .filter(|id| self.teams.contains_key(id))
            })
    }
}

/// The report as an aligned text table: the grouped dimensions, then the sums.
fn table(report: &UsageReport, g: UsageGroupBy, names: &Names) -> String {
    let mut header: Vec<&str> = Vec::new();
    let dims = [
        (g.day, "day"),
        (g.team, "team"),
        (g.key, "key"),
        (g.model, "model"),
    ];
    header.extend(dims.iter().filter(|(on, _)| *on).map(|(_, n)| *n));
    header.extend([
        "requests",
        "errors",
        "input",
        "output",
        "cache_write_5m",
        "cache_write_1h",
        "cache_read",
        "cost_usd",
        "saved_usd",
    ]);
    let none = || "-".to_owned();
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    for r in &report.data {
        let mut row = Vec::new();
        if g.day {
            row.push(r.day.clone().unwrap_or_else(none));
        }
        if g.team {
            row.push(r.team_id.map_or_else(none, |id| {
                names
                    .teams
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| id.to_string())
            }));
        }
        if g.key {
            row.push(r.key_id.map_or_else(none, |id| {
                names
                    .keys
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| id.to_string())
            }));
        }
        if g.model {
            row.push(r.model.clone().unwrap_or_else(none));
        }
        row.extend(
            [
                r.requests,
                r.errors,
                r.input_tokens,
                r.output_tokens,
                r.cache_write_5m_tokens,
                r.cache_write_1h_tokens,
                r.cache_read_tokens,
            ]
            .map(|n| n.to_string()),
        );
        row.push(r.cost_usd.clone());
        row.push(r.saved_usd.clone());
        rows.push(row);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let dims_count = header.len() - 9;
    let mut out = format!(
        "usage from {} to {}\n",
        report.from.format(&Rfc3339).unwrap_or_default(),
        report.to.format(&Rfc3339).unwrap_or_default()
    );
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                if c < dims_count {
                    format!("{cell:<w$}", w = widths[c])
                } else {
                    format!("{cell:>w$}", w = widths[c])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use time::macros::datetime;

    #[test]
    fn times_are_rfc3339_or_a_utc_day() {
        assert_eq!(
            instant("--from", "2026-06-01").unwrap(),
            datetime!(2026-06-01 00:00 UTC)
        );
        assert_eq!(
            instant("--to", "2026-06-01T10:30:00+02:00").unwrap(),
            datetime!(2026-06-01 08:30 UTC)
        );
        let err = instant("--from", "yesterday").unwrap_err().to_string();
        assert!(err.contains("--from"), "{err}");
    }

    #[test]
    fn a_bad_time_says_why_once_and_what_is_accepted() {
        for (text, why) in [
            ("garbage", "the 'year' component could not be parsed"),
            ("2026-02-30", "day was not in range"),
            ("2026-02-30T00:00:00Z", "day was not in range"),
        ] {
            let err = format!("{:#}", instant("--from", text).unwrap_err());
            assert!(err.starts_with("--from: "), "{err}");
            assert_eq!(err.matches(why).count(), 1, "{err}");
            assert!(err.contains("RFC 3339") && err.contains("UTC day"), "{err}");
        }
    }
}
