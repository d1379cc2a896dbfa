//! What both engines share in writing usage: the column list of `usage_records`, the rollup
//! upsert, and the in-memory sums a batch adds to `usage_rollups` (one row per hour and per day
//! for each key, team, user and model). Used by the sqlx repositories of both engines
//! (`usage_repo.rs`) and by SQLite's direct ledger writer (`sqlite/usage_writer.rs`).

use std::collections::HashMap;

use uuid::Uuid;

use crate::usage::UsageRecord;

/// The columns of `usage_records`, in the order every statement binds them.
macro_rules! record_cols {
    () => {
        "id, at, request_id, key_id, team_id, user_id, key_label, endpoint, model_requested, \
         model_served, status, error_type, input_tokens, output_tokens, cache_write_5m_tokens, \
         cache_write_1h_tokens, cache_read_tokens, cost_micro_usd, priced, latency_us, \
         upstream_latency_us, upstream_attempts, streamed, cache_hit, client_aborted, \
         saved_micro_usd"
    };
}

pub(crate) use record_cols;

/// Bound values per usage record.
pub(crate) const RECORD_BINDS: usize = 26;
/// Bound values per rollup row.
pub(crate) const ROLLUP_BINDS: usize = 15;

/// The head of the rollup upsert; then `VALUES` rows of [`ROLLUP_BINDS`] values in
/// [`RollupKey`] + [`Sums`] order, then [`ROLLUP_UPSERT`].
pub(crate) const ROLLUP_INSERT: &str = "INSERT INTO usage_rollups (period, bucket, key_id, \
     team_id, user_id, model, requests, errors, input_tokens, output_tokens, \
     cache_write_5m_tokens, cache_write_1h_tokens, cache_read_tokens, cost_micro_usd, \
     saved_micro_usd) ";

/// `col = usage_rollups.col + excluded.col`, held to the 64-bit range instead of overflowing
/// (the bounds written so that no intermediate value overflows either).
macro_rules! saturating_sum {
    ($col:ident) => {
        concat!(
            stringify!($col),
            " = CASE WHEN excluded.",
            stringify!($col),
            " > 0 AND usage_rollups.",
            stringify!($col),
            " > 9223372036854775807 - excluded.",
            stringify!($col),
            " THEN 9223372036854775807 WHEN excluded.",
            stringify!($col),
            " < 0 AND usage_rollups.",
            stringify!($col),
            " < (-9223372036854775807 - 1) - excluded.",
            stringify!($col),
            " THEN (-9223372036854775807 - 1) ELSE usage_rollups.",
            stringify!($col),
            " + excluded.",
            stringify!($col),
            " END"
        )
    };
}

/// The tail of the rollup upsert: a row that exists is added to, each sum saturating at the
/// column's bounds (a sum that would overflow the integer fails the statement on both engines,
/// and a failed batch would then hold back every record behind it).
pub(crate) const ROLLUP_UPSERT: &str = concat!(
    " ON CONFLICT (period, bucket, key_id, team_id, user_id, model) DO UPDATE SET ",
    saturating_sum!(requests),
    ", ",
    saturating_sum!(errors),
    ", ",
    saturating_sum!(input_tokens),
    ", ",
    saturating_sum!(output_tokens),
    ", ",
    saturating_sum!(cache_write_5m_tokens),
    ", ",
    saturating_sum!(cache_write_1h_tokens),
    ", ",
    saturating_sum!(cache_read_tokens),
    ", ",
    saturating_sum!(cost_micro_usd),
    ", ",
    saturating_sum!(saved_micro_usd)
);

/// Longest text kept in a usage record's column (characters; model names are cut at 200 before).
pub(crate) const MAX_RECORD_TEXT: usize = 256;
/// Largest token count kept in a usage record: far above any request's (a million-token context
/// window), and low enough that a rollup adds millions of such records before it saturates.
pub(crate) const MAX_RECORD_TOKENS: u64 = 1 << 40;
/// Largest cost (or saving, either sign) kept in a usage record, in micro-dollars: $1.1 billion.
pub(crate) const MAX_RECORD_MICROS: u64 = 1 << 50;

/// `records` as the database can take every one of them: text without NUL characters (which
/// PostgreSQL refuses in `text`) and at most [`MAX_RECORD_TEXT`] characters, token counts at
/// most [`MAX_RECORD_TOKENS`] and money at most [`MAX_RECORD_MICROS`]. Borrowed when nothing
/// needs it (the usual case: one scan of short strings and a few comparisons per record).
/// Such values can only come from a misbehaving upstream or a client's odd request, and one
/// refused record would otherwise fail its whole batch.
pub(crate) fn storable(records: &[UsageRecord]) -> std::borrow::Cow<'_, [UsageRecord]> {
    if records.iter().all(is_storable) {
        return std::borrow::Cow::Borrowed(records);
    }
    std::borrow::Cow::Owned(
        records
            .iter()
            .map(|r| {
                let mut r = r.clone();
                make_storable(&mut r);
                r
            })
            .collect(),
    )
}

fn text_ok(s: &str) -> bool {
    s.len() <= MAX_RECORD_TEXT && !s.as_bytes().contains(&0)
}

fn is_storable(r: &UsageRecord) -> bool {
    let texts = [
        Some(r.request_id.as_str()),
        r.key_label.as_deref(),
        Some(r.endpoint.as_str()),
        r.model_requested.as_deref(),
        r.model_served.as_deref(),
        r.error_type.as_deref(),
    ];
    texts.into_iter().flatten().all(text_ok)
        && [
            r.input_tokens,
            r.output_tokens,
            r.cache_write_5m_tokens,
            r.cache_write_1h_tokens,
            r.cache_read_tokens,
        ]
        .into_iter()
        .all(|t| t <= MAX_RECORD_TOKENS)
        && r.cost_micro_usd <= MAX_RECORD_MICROS
        && r.saved_micro_usd.unsigned_abs() <= MAX_RECORD_MICROS
}

fn make_storable(r: &mut UsageRecord) {
    fn text(s: &mut String) {
        if text_ok(s) {
            return;
        }
        let mut clean: String = s
            .chars()
            .take(MAX_RECORD_TEXT)
            .map(|c| {
                if c == '\0' {
                    char::REPLACEMENT_CHARACTER
                } else {
                    c
                }
            })
            .collect();
        std::mem::swap(s, &mut clean);
    }
    text(&mut r.request_id);
    text(&mut r.endpoint);
    for t in [
        &mut r.key_label,
        &mut r.model_requested,
        &mut r.model_served,
        &mut r.error_type,
    ]
    .into_iter()
    .flatten()
    {
        text(t);
    }
    for t in [
        &mut r.input_tokens,
        &mut r.output_tokens,
        &mut r.cache_write_5m_tokens,
        &mut r.cache_write_1h_tokens,
        &mut r.cache_read_tokens,
    ] {
        *t = (*t).min(MAX_RECORD_TOKENS);
    }
    r.cost_micro_usd = r.cost_micro_usd.min(MAX_RECORD_MICROS);
    let max = i64::try_from(MAX_RECORD_MICROS).unwrap_or(i64::MAX);
    r.saved_micro_usd = r.saved_micro_usd.clamp(-max, max);
}

pub(crate) const HOUR: i64 = 3600;
pub(crate) const DAY: i64 = 86_400;

/// A stored integer for a count the store keeps signed.
pub(crate) fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The rollup dimensions of one record in one period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct RollupKey<'a> {
    pub(crate) period: &'static str,
    pub(crate) bucket: i64,
    pub(crate) key_id: Uuid,
    pub(crate) team_id: Uuid,
    pub(crate) user_id: Uuid,
    pub(crate) model: &'a str,
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Sums {
    pub(crate) requests: i64,
    pub(crate) errors: i64,
    pub(crate) input_tokens: i64,
    pub(crate) output_tokens: i64,
    pub(crate) cache_write_5m_tokens: i64,
    pub(crate) cache_write_1h_tokens: i64,
    pub(crate) cache_read_tokens: i64,
    pub(crate) cost_micro_usd: i64,
    pub(crate) saved_micro_usd: i64,
}

impl Sums {
    pub(crate) fn add(&mut self, r: &UsageRecord) {
        self.requests = self.requests.saturating_add(1);
        self.errors = self.errors.saturating_add(i64::from(r.status >= 400));
        for (sum, v) in [
            (&mut self.input_tokens, r.input_tokens),
            (&mut self.output_tokens, r.output_tokens),
            (&mut self.cache_write_5m_tokens, r.cache_write_5m_tokens),
            (&mut self.cache_write_1h_tokens, r.cache_write_1h_tokens),
            (&mut self.cache_read_tokens, r.cache_read_tokens),
            (&mut self.cost_micro_usd, r.cost_micro_usd),
        ] {
            *sum = sum.saturating_add(int(v));
        }
        self.saved_micro_usd = self.saved_micro_usd.saturating_add(r.saved_micro_usd);
    }
}

/// The hourly and daily rollup deltas of `records`, one entry per rollup key, in the order the
/// keys first appear. A record of the same key, team, user, model and hour as the one before (the
/// usual case in a batch) is added to the same two entries without hashing a key.
pub(crate) fn rollup_deltas<'a>(
    records: impl Iterator<Item = &'a UsageRecord>,
) -> Vec<(RollupKey<'a>, Sums)> {
    let mut deltas: Vec<(RollupKey<'a>, Sums)> = Vec::new();
    let mut index: HashMap<RollupKey<'a>, usize> = HashMap::new();
    // The previous record's hour key and its hour and day entries.
    let mut last: Option<(RollupKey<'a>, usize, usize)> = None;
    for r in records {
        let t = r.at.unix_timestamp();
        let hour = RollupKey {
            period: "hour",
            bucket: t.div_euclid(HOUR) * HOUR,
            key_id: r.key_id.unwrap_or(Uuid::nil()),
            team_id: r.team_id.unwrap_or(Uuid::nil()),
            user_id: r.user_id.unwrap_or(Uuid::nil()),
            model: r
                .model_served
                .as_deref()
                .or(r.model_requested.as_deref())
                .unwrap_or_default(),
        };
        let (h, d) = match last {
            Some((key, h, d)) if key == hour => (h, d),
            _ => {
                let day = RollupKey {
                    period: "day",
                    bucket: t.div_euclid(DAY) * DAY,
                    ..hour
                };
                let mut entry = |key: RollupKey<'a>| {
                    *index.entry(key).or_insert_with(|| {
                        deltas.push((key, Sums::default()));
                        deltas.len() - 1
                    })
                };
                let entries = (entry(hour), entry(day));
                last = Some((hour, entries.0, entries.1));
                entries
            }
        };
        deltas[h].1.add(r);
        deltas[d].1.add(r);
    }
    deltas
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use time::OffsetDateTime;
    use time::macros::datetime;

    use super::*;

    #[test]
    fn rollup_deltas_sum_each_key_once_whatever_the_order() {
        let rec = |minute: i64, key: u128, model: &str| -> UsageRecord {
            let at = datetime!(2026-06-01 22:00 UTC) + time::Duration::minutes(minute);
            serde_json::from_value(serde_json::json!({
                "id": Uuid::from_u128(minute as u128), "at": at.unix_timestamp() * 1_000_000,
                "request_id": "", "key_id": Uuid::from_u128(key), "team_id": null,
                "user_id": null, "key_label": null, "endpoint": "",
                "model_requested": "asked", "model_served": model, "status": 200,
                "error_type": null, "input_tokens": 1, "output_tokens": 2,
                "cache_write_5m_tokens": 0, "cache_write_1h_tokens": 0, "cache_read_tokens": 0,
                "cost_micro_usd": 10, "priced": true, "latency_us": 0,
                "upstream_latency_us": null, "upstream_attempts": 1, "streamed": false,
                "cache_hit": false, "client_aborted": false, "saved_micro_usd": 0
            }))
            .expect("a usage record")
        };
        // Runs of one key, interleaved keys and models, an hour and a day boundary.
        let records = [
            rec(0, 1, "a"),
            rec(1, 1, "a"),
            rec(2, 2, "a"),
            rec(3, 1, "a"),
            rec(4, 1, "b"),
            rec(61, 1, "a"),
            rec(121, 1, "a"),
            rec(122, 1, "a"),
        ];
        let deltas = rollup_deltas(records.iter());
        let keys: HashSet<RollupKey<'_>> = deltas.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys.len(), deltas.len(), "one entry per key");
        let sum = |period: &str, hour: i64, key: u128, model: &str| {
            deltas
                .iter()
                .find(|(k, _)| {
                    k.period == period
                        && k.bucket == hour
                        && k.key_id == Uuid::from_u128(key)
                        && k.model == model
                })
                .map(|(_, s)| (s.requests, s.input_tokens, s.cost_micro_usd))
        };
        let h = |dt: OffsetDateTime| dt.unix_timestamp();
        let h22 = h(datetime!(2026-06-01 22:00 UTC));
        let h23 = h(datetime!(2026-06-01 23:00 UTC));
        let h00 = h(datetime!(2026-06-02 00:00 UTC));
        assert_eq!(sum("hour", h22, 1, "a"), Some((3, 3, 30)));
        assert_eq!(sum("hour", h22, 2, "a"), Some((1, 1, 10)));
        assert_eq!(sum("hour", h22, 1, "b"), Some((1, 1, 10)));
        assert_eq!(sum("hour", h23, 1, "a"), Some((1, 1, 10)));
        assert_eq!(sum("hour", h00, 1, "a"), Some((2, 2, 20)));
        assert_eq!(
            sum("day", h(datetime!(2026-06-01 00:00 UTC)), 1, "a"),
            Some((4, 4, 40))
        );
        assert_eq!(sum("day", h00, 1, "a"), Some((2, 2, 20)));
        assert_eq!(deltas.len(), 5 + 4);
        let total: i64 = deltas.iter().map(|(_, s)| s.requests).sum();
        assert_eq!(total, 2 * records.len() as i64);
    }
}
