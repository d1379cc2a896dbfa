//! The model catalogue: `GET /v1/models` (cursor pages, newest first) and `GET /v1/models/{id}`
//! (ids and aliases, e.g. `claude-haiku-4-5` ↔ `claude-haiku-4-5-20251001`).

use std::collections::HashMap;

use bytes::Bytes;
use rampart_api::models::{ModelInfo, Page};

use crate::error::ApiError;

/// The default catalogue: current ids from the API's model list, newest first.
#[must_use]
pub fn default_catalogue() -> Vec<ModelInfo> {
    const MODELS: [(&str, &str, &str, u64, u64); 19] = [
        (
            "claude-opus-5-5",
            "Claude Opus 5.5",
            "2026-10-29T00:00:00Z",
            1_000_000,
            128_000,
        ),
        (
            "claude-sonnet-5-5",
            "Claude Sonnet 5.5",
            "2026-10-22T00:00:00Z",
            1_000_000,
            128_000,
        ),
        (
            "claude-haiku-5-5",
            "Claude Haiku 5.5",
            "2026-10-15T00:00:00Z",
            1_000_000,
            64_000,
        ),
        (
            "claude-fable-5-2",
            "Claude Fable 5.2",
            "2026-10-08T00:00:00Z",
            1_000_000,
            128_000,
        ),
        (
            "claude-mythos-5-2",
            "Claude Mythos 5.2",
            "2026-10-01T00:00:00Z",
            1_000_000,
            128_000,
        ),
        (
            "claude-fable-5-1",
            "Claude Fable 5.1",
            "2026-09-10T00:00:00Z",
            1_000_000,
            128_000,
        ),
        (
            "claude-mythos-5-1",
            "Claude Mythos 5.1",
            "2026-09-03T00:00:00Z",
            1_000_000,
            128_000,
        ),
        (
            "claude-opus-5",
            "Claude Opus 5",
            "2026-07-23T00:00:00Z",
            1_000_000,
            128_000,
        ),
        (
            "claude-sonnet-5",
            "Claude Sonnet 5",
            "2026-07-16T00:00:00Z",
            1_000_000,
            64_000,
        ),
        (
            "claude-fable-5",
            "Claude Fable 5",
            "2026-06-25T00:00:00Z",
            1_000_000,
            128_000,
        ),
        (
            "claude-mythos-5",
            "Claude Mythos 5",
            "2026-06-18T00:00:00Z",
            1_000_000,
            128_000,
        ),
        (
            "claude-opus-4-8",
            "Claude Opus 4.8",
            "2026-05-14T00:00:00Z",
            1_000_000,
            128_000,
        ),
        (
            "claude-opus-4-7",
            "Claude Opus 4.7",
            "2026-04-16T00:00:00Z",
            1_000_000,
            128_000,
        ),
        (
            "claude-mythos-preview",
            "Claude Mythos Preview",
            "2026-04-07T00:00:00Z",
            1_000_000,
            128_000,
        ),
        (
            "claude-sonnet-4-6",
            "Claude Sonnet 4.6",
            "2026-02-17T00:00:00Z",
            1_000_000,
            64_000,
        ),
        (
            "claude-opus-4-6",
            "Claude Opus 4.6",
            "2026-02-05T00:00:00Z",
            1_000_000,
            128_000,
        ),
        (
            "claude-opus-4-5-20251101",
            "Claude Opus 4.5",
            "2025-11-24T00:00:00Z",
            200_000,
            64_000,
        ),
        (
            "claude-haiku-4-5-20251001",
            "Claude Haiku 4.5",
            "2025-10-15T00:00:00Z",
            200_000,
            64_000,
        ),
        (
            "claude-sonnet-4-5-20250929",
            "Claude Sonnet 4.5",
            "2025-09-29T00:00:00Z",
            200_000,
            64_000,
        ),
    ];
    MODELS
        .iter()
        .map(|(id, name, created, input, output)| ModelInfo {
            id: (*id).to_owned(),
            kind: "model".to_owned(),
            display_name: (*name).to_owned(),
            created_at: (*created).to_owned(),
            max_input_tokens: Some(*input),
            max_tokens: Some(*output),
        })
        .collect()
}

/// The alias of a dated id (`claude-haiku-4-5-20251001` → `claude-haiku-4-5`).
fn alias_of(id: &str) -> Option<&str> {
    let (alias, date) = id.rsplit_once('-')?;
    (date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit())).then_some(alias)
}

/// The catalogue with precomputed lookups and JSON.
#[derive(Debug)]
pub(crate) struct Catalogue {
    models: Vec<ModelInfo>,
    json: Vec<Bytes>,
    by_name: HashMap<String, usize>,
}

impl Catalogue {
    /// Indexes `models` (kept in the given order, which is newest first).
    pub(crate) fn new(models: Vec<ModelInfo>) -> Self {
        let mut by_name = HashMap::with_capacity(models.len() * 2);
        for (i, m) in models.iter().enumerate() {
            by_name.insert(m.id.clone(), i);
        }
        for (i, m) in models.iter().enumerate() {
            if let Some(alias) = alias_of(&m.id) {
                by_name.entry(alias.to_owned()).or_insert(i);
            }
        }
        let json = models
            .iter()
            .map(|m| Bytes::from(serde_json::to_vec(m).unwrap_or_default()))
            .collect();
        Self {
            models,
            json,
            by_name,
        }
    }

    /// The catalogue entry for an id or alias.
    pub(crate) fn resolve(&self, name: &str) -> Option<&ModelInfo> {
        let i = self
            .by_name
            .get(name)
            .or_else(|| alias_of(name).and_then(|a| self.by_name.get(a)))?;
        self.models.get(*i)
    }

    /// `GET /v1/models/{id}` body.
    ///
    /// # Errors
    /// 404 `not_found_error` `model: <id>`.
    pub(crate) fn get_json(&self, name: &str) -> Result<Bytes, ApiError> {
        let m = self.resolve(name).ok_or_else(|| unknown_model(name))?;
        let i = self.models.iter().position(|x| x.id == m.id).unwrap_or(0);
        Ok(self.json.get(i).cloned().unwrap_or_default())
    }

    /// `GET /v1/models` page.
    ///
    /// # Errors
    /// 400 for a bad `limit`.
    pub(crate) fn list(&self, query: Option<&str>) -> Result<Page<ModelInfo>, ApiError> {
        let q = PageQuery::parse(query)?;
        Ok(q.page(&self.models, |m| &m.id))
    }
}

/// The 404 for an unknown model, as the API words it.
pub(crate) fn unknown_model(name: &str) -> ApiError {
    ApiError::not_found(format!("model: {name}"))
}

/// `limit`, `before_id`, `after_id` of a list endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PageQuery {
    limit: usize,
    before_id: Option<String>,
    after_id: Option<String>,
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Iterates the decoded `key=value` pairs of a query string.
pub(crate) fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (String, String)> + '_ {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
}

impl PageQuery {
    /// Parses the query string.
    ///
    /// # Errors
    /// 400 when `limit` is not an integer in 1–1000.
    pub(crate) fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut q = Self {
            limit: 20,
            ..Self::default()
        };
        for (k, v) in query_pairs(query) {
            match k.as_str() {
                "limit" => {
                    let n: i64 = v
                        .parse()
                        .map_err(|_| ApiError::invalid("limit: Input should be a valid integer"))?;
                    if n < 1 {
                        return Err(ApiError::invalid(
                            "limit: Input should be greater than or equal to 1",
                        ));
                    }
                    if n > 1000 {
                        return Err(ApiError::invalid(
                            "limit: Input should be less than or equal to 1000",
                        ));
                    }
                    q.limit = n as usize;
                }
                "before_id" if !v.is_empty() => q.before_id = Some(v),
                "after_id" if !v.is_empty() => q.after_id = Some(v),
                _ => {}
            }
        }
        Ok(q)
    }

    /// The page of `items` (newest first): `after_id` pages towards older items, `before_id`
    /// towards newer ones. An unknown cursor gives an empty page.
    pub(crate) fn page<T: Clone>(&self, items: &[T], id: impl Fn(&T) -> &str) -> Page<T> {
        let position = |cursor: &str| items.iter().position(|x| id(x) == cursor);
        let (start, end, has_more) = if let Some(after) = &self.after_id {
            match position(after) {
                Some(i) => {
                    let start = i + 1;
                    let end = (start + self.limit).min(items.len());
                    (start, end, end < items.len())
                }
                None => (0, 0, false),
            }
        } else if let Some(before) = &self.before_id {
            match position(before) {
                Some(i) => {
                    let start = i.saturating_sub(self.limit);
                    (start, i, start > 0)
                }
                None => (0, 0, false),
            }
        } else {
            let end = self.limit.min(items.len());
            (0, end, end < items.len())
        };
        let data: Vec<T> = items.get(start..end).unwrap_or(&[]).to_vec();
        Page {
            first_id: data.first().map(|x| id(x).to_owned()),
            last_id: data.last().map(|x| id(x).to_owned()),
            data,
            has_more,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_resolve_both_ways() {
        let mut models = default_catalogue();
        models.push(ModelInfo {
            id: "claude-x-1".into(),
            kind: "model".into(),
            display_name: "X".into(),
            created_at: "2025-01-01T00:00:00Z".into(),
            max_input_tokens: None,
            max_tokens: None,
        });
        let c = Catalogue::new(models);
        assert_eq!(
            c.resolve("claude-haiku-4-5").unwrap().id,
            "claude-haiku-4-5-20251001"
        );
        assert_eq!(
            c.resolve("claude-haiku-4-5-20251001").unwrap().id,
            "claude-haiku-4-5-20251001"
        );
        assert_eq!(c.resolve("claude-x-1-20250101").unwrap().id, "claude-x-1");
        assert!(c.resolve("claude-nope").is_none());
        assert_eq!(
            c.get_json("claude-nope").unwrap_err().message,
            "model: claude-nope"
        );
    }

    #[test]
    fn pages_walk_forward_and_back() {
        let items: Vec<String> = (0..5).map(|i| format!("id{i}")).collect();
        let q = |s: &str| PageQuery::parse(Some(s)).unwrap();
        let p = q("limit=2").page(&items, |s| s);
        assert_eq!(
            (p.data.clone(), p.has_more),
            (vec!["id0".to_owned(), "id1".to_owned()], true)
        );
        let p = q("limit=2&after_id=id1").page(&items, |s| s);
        assert_eq!(p.first_id.as_deref(), Some("id2"));
        assert!(p.has_more);
        let p = q("limit=2&after_id=id3").page(&items, |s| s);
        assert_eq!((p.data.len(), p.has_more), (1, false));
        let p = q("limit=2&before_id=id3").page(&items, |s| s);
        assert_eq!((p.first_id.as_deref(), p.has_more), (Some("id1"), true));
        assert!(PageQuery::parse(Some("limit=0")).is_err());
        assert!(PageQuery::parse(Some("limit=1001")).is_err());
        assert!(PageQuery::parse(Some("limit=x")).is_err());
    }
}
