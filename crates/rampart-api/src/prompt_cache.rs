//! Prompt-caching facts of the API that both the simulator and the gateway's breakpoint policy
//! need.

/// The most `cache_control` breakpoints one request may carry.
pub const MAX_BREAKPOINTS: usize = 4;

/// Minimum cacheable prefix, in tokens, per model id (Anthropic's published table). A model id
/// matches an entry when it equals it or continues it after a `-` (dated ids, later point
/// releases); the longest matching entry wins.
pub const MIN_CACHEABLE_TOKENS: [(&str, u64); 10] = [
    ("claude-opus-5", 512),
    ("claude-haiku-4-5", 4096),
    ("claude-opus-4-5", 4096),
    ("claude-opus-4-6", 4096),
    ("claude-mythos-preview", 4096),
    ("claude-sonnet-4-6", 2048),
    ("claude-3-5-haiku", 2048),
    ("claude-3-haiku", 2048),
    ("claude-haiku-3", 2048),
    ("claude-sonnet-4-5", 1024),
];

/// The minimum for models not in [`MIN_CACHEABLE_TOKENS`].
pub const DEFAULT_MIN_CACHEABLE_TOKENS: u64 = 1024;

/// The entry of `table` for `model` (longest matching prefix), else `default`.
#[must_use]
pub fn min_cacheable_tokens_in<S: AsRef<str>>(
    table: &[(S, u64)],
    default: u64,
    model: &str,
) -> u64 {
    table
        .iter()
        .filter(|(p, _)| {
            let p = p.as_ref();
            model == p
                || model
                    .strip_prefix(p)
                    .is_some_and(|rest| rest.starts_with('-'))
        })
        .max_by_key(|(p, _)| p.as_ref().len())
        .map_or(default, |(_, n)| *n)
}

/// The minimum cacheable prefix of `model` by the published table.
#[must_use]
pub fn min_cacheable_tokens(model: &str) -> u64 {
    min_cacheable_tokens_in(&MIN_CACHEABLE_TOKENS, DEFAULT_MIN_CACHEABLE_TOKENS, model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_whole_or_by_dash_continuation() {
        assert_eq!(min_cacheable_tokens("claude-haiku-4-5-20251001"), 4096);
        assert_eq!(min_cacheable_tokens("claude-opus-5"), 512);
        assert_eq!(min_cacheable_tokens("claude-opus-50"), 1024);
        assert_eq!(min_cacheable_tokens("claude-sonnet-4-6"), 2048);
        assert_eq!(min_cacheable_tokens("claude-new"), 1024);
    }
}
