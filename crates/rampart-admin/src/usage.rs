//! Usage reports: the shape `GET /admin/v1/usage` and `rampart usage --json` share, and the
//! `group_by` parameter.

use rampart_store::{UsageGroupBy, UsageQuery, UsageRow};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

/// One group's usage. Dimensions appear when grouped by them; a grouped `key_id`, `team_id` or
/// `model` that is absent means "none" (e.g. requests refused before a key was known).
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageRowView {
    /// The UTC day (`YYYY-MM-DD`), when grouped by day.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = Date)]
    pub day: Option<String>,
    /// The key, when grouped by key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<Uuid>,
    /// The team, when grouped by team.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team_id: Option<Uuid>,
    /// The model, when grouped by model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Requests.
    pub requests: u64,
    /// Requests answered with a status of 400 or more.
    pub errors: u64,
    /// Uncached input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Prompt-cache writes with the 5-minute TTL.
    pub cache_write_5m_tokens: u64,
    /// Prompt-cache writes with the 1-hour TTL.
    pub cache_write_1h_tokens: u64,
    /// Prompt-cache reads.
    pub cache_read_tokens: u64,
    /// Cost in micro-dollars (exact).
    pub cost_micro_usd: u64,
    /// Cost in dollars, as a decimal string with six places.
    pub cost_usd: String,
    /// What Rampart's caching saved, in micro-dollars: response-cache hits (the cost of each
    /// replayed answer) plus prompt-cache breakpoints (uncached price of the cache reads less the
    /// extra price of the writes; negative when the writes cost more than the reads saved).
    pub saved_micro_usd: i64,
    /// The same in dollars, six places.
    pub saved_usd: String,
}

/// Usage over a range.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageReport {
    /// The start actually covered (whole hours).
    #[serde(with = "time::serde::rfc3339")]
    pub from: OffsetDateTime,
    /// The end actually covered (whole hours).
    #[serde(with = "time::serde::rfc3339")]
    pub to: OffsetDateTime,
    /// The dimensions grouped by, in the order the rows are sorted by.
    pub group_by: Vec<String>,
    /// One row per group (one total row without grouping).
    pub data: Vec<UsageRowView>,
}

impl UsageReport {
    /// The report of `rows`, the answer to `query`.
    #[must_use]
    pub fn new(query: &UsageQuery, rows: Vec<UsageRow>) -> Self {
        let (from, to) = widened(query.from, query.to).unwrap_or((query.from, query.to));
        Self {
            from,
            to,
            group_by: dimension_names(query.group_by),
            data: rows.into_iter().map(UsageRowView::from).collect(),
        }
    }
}

impl From<UsageRow> for UsageRowView {
    fn from(r: UsageRow) -> Self {
        Self {
            day: r.day.map(|d| d.to_string()),
            key_id: r.key_id,
            team_id: r.team_id,
            model: r.model,
            requests: r.requests,
            errors: r.errors,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cache_write_5m_tokens: r.cache_write_5m_tokens,
            cache_write_1h_tokens: r.cache_write_1h_tokens,
            cache_read_tokens: r.cache_read_tokens,
            cost_micro_usd: r.cost_micro_usd,
            cost_usd: rampart_ledger::pricing::usd(r.cost_micro_usd),
            saved_micro_usd: r.saved_micro_usd,
            saved_usd: rampart_ledger::pricing::signed_usd(r.saved_micro_usd),
        }
    }
}

/// `key,team,model,day` (any subset, any order) → the grouping.
///
/// # Errors
/// An unknown dimension, named.
pub fn parse_group_by(text: Option<&str>) -> Result<UsageGroupBy, String> {
    let mut g = UsageGroupBy::default();
    for part in text.unwrap_or_default().split(',').map(str::trim) {
        match part {
            "" => {}
            "key" => g.key = true,
            "team" => g.team = true,
            "model" => g.model = true,
            "day" => g.day = true,
            other => {
                let shown: String = other.chars().take(40).collect();
                return Err(format!(
                    "group_by: unknown dimension `{shown}` (expected key, team, model, day)"
                ));
            }
        }
    }
    Ok(g)
}

/// The grouped dimensions in the order rows are sorted by: day, team, key, model.
#[must_use]
pub fn dimension_names(g: UsageGroupBy) -> Vec<String> {
    [
        (g.day, "day"),
        (g.team, "team"),
        (g.key, "key"),
        (g.model, "model"),
    ]
    .into_iter()
    .filter(|(on, _)| *on)
    .map(|(_, name)| name.to_owned())
    .collect()
}

/// What a range's bounds must lie in: the whole hours around it are reported in RFC 3339, whose
/// years run from 0000 to 9999.
pub const RANGE_BOUNDS: &str =
    "from and to must lie between 0000-01-01T00:00:00Z and 9999-12-31T23:00:00Z";

/// Whether the whole hours around `[from, to)` can be reported (see [`RANGE_BOUNDS`]).
#[must_use]
pub fn reportable(from: OffsetDateTime, to: OffsetDateTime) -> bool {
    widened(from, to).is_some()
}

/// Whole hours around `[from, to)`, as the rollups answer; `None` outside RFC 3339's years.
fn widened(from: OffsetDateTime, to: OffsetDateTime) -> Option<(OffsetDateTime, OffsetDateTime)> {
    let hour = |t: OffsetDateTime| t.unix_timestamp().div_euclid(3600) * 3600;
    let at = |s: i64| {
        OffsetDateTime::from_unix_timestamp(s)
            .ok()
            .filter(|t| (0..=9999).contains(&t.year()))
    };
    let to_h = hour(to);
    let exact = to.unix_timestamp() == to_h && to.nanosecond() == 0;
    Some((at(hour(from))?, at(if exact { to_h } else { to_h + 3600 })?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use time::macros::datetime;

    #[test]
    fn group_by_takes_known_dimensions_in_any_order() {
        let g = parse_group_by(Some("model, day,key")).unwrap();
        assert!(g.model && g.day && g.key && !g.team);
        assert_eq!(dimension_names(g), ["day", "key", "model"]);
        assert_eq!(
            dimension_names(parse_group_by(None).unwrap()),
            Vec::<String>::new()
        );
        assert!(parse_group_by(Some("key,cost")).is_err());
    }

    #[test]
    fn ranges_are_reported_in_whole_hours() {
        assert_eq!(
            widened(
                datetime!(2026-06-01 10:30 UTC),
                datetime!(2026-06-01 12:00 UTC)
            ),
            Some((
                datetime!(2026-06-01 10:00 UTC),
                datetime!(2026-06-01 12:00 UTC)
            ))
        );
        assert_eq!(
            widened(
                datetime!(2026-06-01 10:00 UTC),
                datetime!(2026-06-01 12:00:01 UTC)
            )
            .map(|(_, to)| to),
            Some(datetime!(2026-06-01 13:00 UTC))
        );
    }
}
