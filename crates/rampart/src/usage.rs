//! `rampart usage`: usage and cost from the ledger's rollups, as a table or as the JSON of
//! `GET /admin/v1/usage`.

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use rampart_admin::usage::{RANGE_BOUNDS, UsageReport, parse_group_by, reportable};
use rampart_store::{Store, UsageGroupBy, UsageQuery};
use time::format_description::well_known::Rfc3339;
use time::{Date, Duration, OffsetDateTime, Time};
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

/// A time argument: RFC 3339, or a day meaning its start (UTC).
fn instant(flag: &str, text: &str) -> anyhow::Result<OffsetDateTime> {
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(t);
    }
    let day = Date::parse(
        text,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .with_context(|| format!("{flag}: `{text}` is neither RFC 3339 nor YYYY-MM-DD"))?;
    Ok(day.with_time(Time::MIDNIGHT).assume_utc())
}

/// Run `rampart usage`.
///
/// # Errors
/// Bad arguments, an unknown team, or a store failure.
pub async fn run(args: UsageArgs) -> anyhow::Result<ExitCode> {
    let group_by = parse_group_by(args.group_by.as_deref()).map_err(anyhow::Error::msg)?;
    let to = match &args.to {
        Some(t) => instant("--to", t)?,
        None => OffsetDateTime::now_utc(),
    };
    let from = match &args.from {
        Some(f) => instant("--from", f)?,
        None => to.checked_sub(Duration::days(30)).context(RANGE_BOUNDS)?,
    };
    if from >= to {
        bail!("--from must be before --to");
    }
    if !reportable(from, to) {
        bail!(RANGE_BOUNDS);
    }
    let store = existing(&args.store).await?;
    let names = Names::load(&store).await?;
    let team_id = match &args.team {
        Some(t) => Some(names.team(t).with_context(|| format!("no team `{t}`"))?),
        None => None,
    };
    let query = UsageQuery {
        from,
        to,
        key_id: args.key,
        team_id,
        user_id: None,
        model: args.model.clone(),
        group_by,
    };
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
}
