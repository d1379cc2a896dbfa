//! Usage reports: the shape `GET /admin/v1/usage` and `rampart usage --json` share, and the
//! checks of what both take ([`check_inputs`]: the range, `group_by` and `model`), so that the
//! command line and the API accept and refuse the same requests.

use rampart_store::{UsageGroupBy, UsageQuery, UsageRow};
use serde::Serialize;
use time::{Duration, OffsetDateTime};
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

/// The default range: the 30 days before `to`.
pub const DEFAULT_RANGE: Duration = Duration::days(30);
/// The longest range one query may cover.
pub const MAX_RANGE: Duration = Duration::days(400);
/// The longest `model` filter, in characters.
pub const MAX_MODEL_CHARS: usize = 200;

/// How a surface names its inputs in messages: the API's query parameters (`group_by`) or the
/// command line's flags (`--group-by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spelling {
    /// `GET /admin/v1/usage`'s parameter names.
    Api,
    /// `rampart usage`'s flags.
    Cli,
}

impl Spelling {
    /// The input `field` (a query parameter's name) as this surface spells it.
    #[must_use]
    pub fn name(self, field: &str) -> String {
        match self {
            Spelling::Api => field.to_owned(),
            Spelling::Cli => format!("--{}", field.replace('_', "-")),
        }
    }
}

/// What a usage request asks for, as given, before the caller's scope is applied.
#[derive(Debug, Clone, Copy, Default)]
pub struct UsageInputs<'a> {
    /// Start (inclusive); default: [`DEFAULT_RANGE`] before `to`.
    pub from: Option<OffsetDateTime>,
    /// End (exclusive); default: now.
    pub to: Option<OffsetDateTime>,
    /// Comma-separated dimensions (see [`parse_group_by`]).
    pub group_by: Option<&'a str>,
    /// Only this model.
    pub model: Option<&'a str>,
}

/// A usage query as both surfaces accept it: the range, grouping and model checked, every other
/// filter unset (each surface resolves its own and applies the caller's scope).
///
/// # Errors
/// A message naming the input in `spelling`: `from` not before `to`, a range over
/// [`MAX_RANGE`] or outside what RFC 3339 can write ([`range_bounds`]), a `model` that is empty
/// or over [`MAX_MODEL_CHARS`], a bad `group_by` ([`parse_group_by`]).
pub fn check_inputs(
    inputs: &UsageInputs<'_>,
    now: OffsetDateTime,
    spelling: Spelling,
) -> Result<UsageQuery, String> {
    let name = |field| spelling.name(field);
    let to = inputs.to.unwrap_or(now);
    let from = match inputs.from {
        Some(from) => from,
        None => to
            .checked_sub(DEFAULT_RANGE)
            .ok_or_else(|| range_bounds(spelling))?,
    };
    if from >= to {
        return Err(format!("{} must be before {}", name("from"), name("to")));
    }
    if to - from > MAX_RANGE {
        return Err(format!(
            "{} and {} may be at most {} days apart",
            name("from"),
            name("to"),
            MAX_RANGE.whole_days()
        ));
    }
    if !reportable(from, to) {
        return Err(range_bounds(spelling));
    }
    if inputs
        .model
        .is_some_and(|m| m.is_empty() || m.chars().count() > MAX_MODEL_CHARS)
    {
        return Err(format!(
            "{} must be 1 to {MAX_MODEL_CHARS} characters",
            name("model")
        ));
    }
    if inputs
        .model
        .is_some_and(|m| m.chars().any(char::is_control))
    {
        return Err(format!(
            "{} must not contain control characters",
            name("model")
        ));
    }
    Ok(UsageQuery {
        from,
        to,
        key_id: None,
        team_id: None,
        user_id: None,
        model: inputs.model.map(str::to_owned),
        group_by: parse_group_by(inputs.group_by, spelling)?,
    })
}

/// `key,team,model,day` (any subset, any order) → the grouping; absent or blank is no grouping
/// (one total row).
///
/// # Errors
/// An unknown, empty (`key,,team`, `key,`) or repeated dimension, named in `spelling`.
pub fn parse_group_by(text: Option<&str>, spelling: Spelling) -> Result<UsageGroupBy, String> {
    const EXPECTED: &str = "expected a comma-separated list of key, team, model, day";
    let mut g = UsageGroupBy::default();
    let text = text.unwrap_or_default();
    if text.trim().is_empty() {
        return Ok(g);
    }
    let name = spelling.name("group_by");
    for part in text.split(',').map(str::trim) {
        let on = match part {
            "key" => &mut g.key,
            "team" => &mut g.team,
            "model" => &mut g.model,
            "day" => &mut g.day,
            "" => return Err(format!("{name}: an empty dimension ({EXPECTED})")),
            other => {
                let shown: String = other.chars().take(40).collect();
                return Err(format!("{name}: unknown dimension `{shown}` ({EXPECTED})"));
            }
        };
        if *on {
            return Err(format!("{name}: `{part}` is given twice"));
        }
        *on = true;
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
#[must_use]
pub fn range_bounds(spelling: Spelling) -> String {
    format!(
        "{} and {} must lie between 0000-01-01T00:00:00Z and 9999-12-31T23:00:00Z",
        spelling.name("from"),
        spelling.name("to")
    )
}

/// Whether the whole hours around `[from, to)` can be reported (see [`range_bounds`]).
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
        let parse = |text| parse_group_by(text, Spelling::Api);
        let g = parse(Some("model, day,key")).unwrap();
        assert!(g.model && g.day && g.key && !g.team);
        assert_eq!(dimension_names(g), ["day", "key", "model"]);
        for none in [None, Some(""), Some(" ")] {
            assert_eq!(dimension_names(parse(none).unwrap()), Vec::<String>::new());
        }
        assert!(parse(Some("key,cost")).is_err());
    }

    #[test]
    fn group_by_refuses_empty_and_repeated_dimensions_naming_the_input() {
        for (text, says) in [
            ("key,,team", "an empty dimension"),
            ("key,", "an empty dimension"),
            (",key", "an empty dimension"),
            ("key, key", "`key` is given twice"),
        ] {
            let api = parse_group_by(Some(text), Spelling::Api).unwrap_err();
            assert!(
                api.starts_with("group_by: ") && api.contains(says),
                "{text}: {api}"
            );
            let cli = parse_group_by(Some(text), Spelling::Cli).unwrap_err();
            assert!(
                cli.starts_with("--group-by: ") && cli.contains(says),
                "{text}: {cli}"
            );
        }
    }

    #[test]
    fn both_surfaces_check_the_range_and_model_alike() {
        let now = datetime!(2026-06-10 12:00 UTC);
        let check = |inputs: UsageInputs<'_>, spelling| check_inputs(&inputs, now, spelling);
        let q = check(UsageInputs::default(), Spelling::Cli).unwrap();
        assert_eq!((q.from, q.to), (now - DEFAULT_RANGE, now));
        let too_long = UsageInputs {
            from: Some(datetime!(0000-01-01 00:00 UTC)),
            ..UsageInputs::default()
        };
        assert_eq!(
            check(too_long, Spelling::Cli).unwrap_err(),
            "--from and --to may be at most 400 days apart"
        );
        let empty_model = UsageInputs {
            model: Some(""),
            ..UsageInputs::default()
        };
        assert_eq!(
            check(empty_model, Spelling::Api).unwrap_err(),
            "model must be 1 to 200 characters"
        );
        assert_eq!(
            check(empty_model, Spelling::Cli).unwrap_err(),
            "--model must be 1 to 200 characters"
        );
        let nul = UsageInputs {
            model: Some("claude\u{0}x"),
            ..UsageInputs::default()
        };
        assert_eq!(
            check(nul, Spelling::Api).unwrap_err(),
            "model must not contain control characters"
        );
        let backwards = UsageInputs {
            from: Some(now),
            to: Some(now - Duration::hours(1)),
            ..UsageInputs::default()
        };
        assert_eq!(
            check(backwards, Spelling::Api).unwrap_err(),
            "from must be before to"
        );
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
