//! Simulated prompt caching: breakpoint prefixes hashed per credential and model, with 5m/1h TTLs on
//! `tokio::time`, refreshed on hit, and the usage split the API reports.

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::canon::{finish, hash_value};
use crate::tokens::{Prompt, Ttl};

/// How far back from a breakpoint earlier prefixes are looked up (the API's 20-block window).
const LOOKBACK: usize = 20;
/// Expired entries are swept when the map grows past this.
const SWEEP_AT: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    expires: Instant,
    ttl: Ttl,
}

/// Input-token split of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct InputUsage {
    /// Tokens after the last cached or written prefix.
    pub input: u64,
    /// Tokens read from the cache.
    pub cache_read: u64,
    /// Tokens written with the 5m TTL.
    pub write_5m: u64,
    /// Tokens written with the 1h TTL.
    pub write_1h: u64,
}

impl InputUsage {
    /// No caching: everything is plain input.
    pub(crate) const fn uncached(total: u64) -> Self {
        Self {
            input: total,
            cache_read: 0,
            write_5m: 0,
            write_1h: 0,
        }
    }

    /// `cache_creation_input_tokens`.
    pub(crate) const fn cache_creation(&self) -> u64 {
        self.write_5m + self.write_1h
    }

    /// The usage object with these input counts.
    pub(crate) fn usage(&self, output_tokens: u64, tier: &str) -> rampart_api::Usage {
        rampart_api::Usage {
            input_tokens: self.input,
            output_tokens,
            cache_creation_input_tokens: self.cache_creation(),
            cache_read_input_tokens: self.cache_read,
            cache_creation: Some(rampart_api::CacheCreation {
                ephemeral_5m_input_tokens: self.write_5m,
                ephemeral_1h_input_tokens: self.write_1h,
            }),
            service_tier: Some(tier.to_owned()),
        }
    }
}

/// The cache: prefix hash (which includes credential and model) → entry.
#[derive(Debug, Default)]
pub(crate) struct PromptCache {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

/// Minimum cacheable prefix, in tokens, for a model id (the API's published table).
pub(crate) fn min_cacheable_tokens(model: &str) -> u64 {
    rampart_api::prompt_cache::min_cacheable_tokens(model)
}

impl PromptCache {
    /// Forgets everything.
    pub(crate) fn clear(&self) {
        if let Ok(mut m) = self.entries.lock() {
            m.clear();
        }
    }

    /// Looks up and writes the prompt's breakpoints; returns the usage split.
    ///
    /// Reads: the longest prefix (at a breakpoint, or up to 20 units before one) that is cached →
    /// `cache_read`. Writes: every qualifying breakpoint after it (prefix ≥ `min_tokens`) is stored;
    /// 1h writes cover up to the last 1h breakpoint, 5m writes the rest up to the last breakpoint.
    pub(crate) fn apply(
        &self,
        prompt: &Prompt<'_>,
        credential: &str,
        model: &str,
        min_tokens: u64,
    ) -> InputUsage {
        if !prompt.has_breakpoints {
            return InputUsage::uncached(prompt.total);
        }
        let last_bp = prompt
            .units
            .iter()
            .rposition(|u| u.ttl.is_some())
            .unwrap_or(0);
        let mut h = Sha256::new();
        h.update(credential.as_bytes());
        h.update(b"\0");
        h.update(model.as_bytes());
        h.update(b"\0");
        // (hash, cumulative tokens) at every unit up to the last breakpoint.
        let mut prefixes = Vec::with_capacity(last_bp + 1);
        let mut cumulative = 0;
        for u in &prompt.units[..=last_bp] {
            h.update(u.tag);
            hash_value(&mut h, u.value, true);
            cumulative += u.tokens;
            prefixes.push((finish(h.clone()), cumulative));
        }
        let now = Instant::now();
        let Ok(mut map) = self.entries.lock() else {
            return InputUsage::uncached(prompt.total);
        };
        // Longest hit: scan breakpoints from the last, each with its look-back window.
        let mut hit: Option<usize> = None;
        for (i, u) in prompt.units[..=last_bp].iter().enumerate().rev() {
            if u.ttl.is_none() || hit.is_some_and(|h| h >= i) {
                continue;
            }
            let lo = i.saturating_sub(LOOKBACK - 1);
            if let Some(pos) = (lo..=i)
                .rev()
                .find(|&k| map.get(&prefixes[k].0).is_some_and(|e| e.expires > now))
                && hit.is_none_or(|h| pos > h)
            {
                hit = Some(pos);
            }
        }
        let read = hit.map_or(0, |k| prefixes[k].1);
        if let Some(k) = hit
            && let Some(e) = map.get_mut(&prefixes[k].0)
        {
            e.expires = now + e.ttl.duration();
        }
        let mut last_1h = read;
        let mut last_any = read;
        for (i, u) in prompt.units[..=last_bp].iter().enumerate() {
            let Some(ttl) = u.ttl else { continue };
            let (key, tokens) = prefixes[i];
            if hit.is_some_and(|h| i <= h) || tokens < min_tokens {
                continue;
            }
            let entry = map.entry(key).or_insert(Entry { expires: now, ttl });
            if ttl == Ttl::OneHour {
                entry.ttl = Ttl::OneHour;
                last_1h = tokens;
            }
            entry.expires = entry.expires.max(now + ttl.duration());
            last_any = tokens;
        }
        if map.len() > SWEEP_AT {
            map.retain(|_, e| e.expires > now);
        }
        drop(map);
        InputUsage {
            input: prompt.total - last_any,
            cache_read: read,
            write_1h: last_1h - read,
            write_5m: last_any - last_1h,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::prompt;
    use crate::validate::{Endpoint, message_params};
    use serde_json::{Value, json};

    fn long(n: usize) -> String {
        "word ".repeat(n)
    }

    fn usage(cache: &PromptCache, body: &Value, key: &str) -> InputUsage {
        let p = message_params(body, Endpoint::Create).unwrap();
        let pr = prompt(&p).unwrap();
        cache.apply(&pr, key, p.model, min_cacheable_tokens(p.model))
    }

    fn body(system_ttl: &str, question: &str) -> Value {
        json!({"model": "claude-sonnet-4-5", "max_tokens": 10,
            "system": [{"type": "text", "text": long(1000), "cache_control": {"type": "ephemeral", "ttl": system_ttl}}],
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": long(1000), "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": question}]}]})
    }

    #[tokio::test(start_paused = true)]
    async fn first_request_writes_and_second_reads() {
        let cache = PromptCache::default();
        let b = body("1h", "what?");
        let first = usage(&cache, &b, "k");
        assert_eq!(first.cache_read, 0);
        assert_eq!(first.write_1h, 1253);
        assert_eq!(first.write_5m, 1257);
        assert_eq!(first.input, 5);
        let second = usage(&cache, &b, "k");
        assert_eq!(second.cache_read, 2510);
        assert_eq!(second.cache_creation(), 0);
        assert_eq!(second.input, 5);
        // Another organisation does not share the entries.
        assert_eq!(usage(&cache, &b, "other").cache_read, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn five_minute_entries_expire_but_one_hour_entries_survive() {
        let cache = PromptCache::default();
        let b = body("1h", "q");
        usage(&cache, &b, "k");
        tokio::time::advance(std::time::Duration::from_secs(301)).await;
        let u = usage(&cache, &b, "k");
        assert_eq!(
            u.cache_read, 1253,
            "only the 1h system prefix is still cached"
        );
        assert_eq!(u.write_5m, 1257);
        tokio::time::advance(std::time::Duration::from_secs(3601)).await;
        assert_eq!(usage(&cache, &b, "k").cache_read, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn prefixes_shorter_than_the_model_minimum_are_not_cached() {
        let cache = PromptCache::default();
        let b = json!({"model": "claude-haiku-4-5", "max_tokens": 10,
            "system": [{"type": "text", "text": long(1000), "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": "hi"}]});
        let u = usage(&cache, &b, "k");
        assert_eq!(u, InputUsage::uncached(u.input));
        assert_eq!(usage(&cache, &b, "k").cache_read, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_moved_breakpoint_still_reads_the_earlier_prefix() {
        let cache = PromptCache::default();
        let turn1 = json!({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [
            {"role": "user", "content": [{"type": "text", "text": long(2000), "cache_control": {"type": "ephemeral"}}]}]});
        let w = usage(&cache, &turn1, "k");
        let turn2 = json!({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [
            {"role": "user", "content": [{"type": "text", "text": long(2000)}]},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "more", "cache_control": {"type": "ephemeral"}}]}]});
        let u = usage(&cache, &turn2, "k");
        assert_eq!(u.cache_read, w.cache_creation());
        assert_eq!(u.write_5m, 4 + 1 + 4 + 3 + 1);
        assert_eq!(u.input, 0);
    }
}
