//! Automatic prompt-cache breakpoints: when a policy is on, mark the prefixes worth caching with
//! `cache_control` so repeated tools and system prompts, and the growing prefix of a multi-turn
//! chat, are read from Anthropic's prompt cache at a tenth of the input price.
//!
//! Where (in prefix order — tools, then system, then messages):
//! 1. the last tool definition (everything after it changes more often);
//! 2. the last system block;
//! 3. the last block of the second-to-last user turn — the end of the previous request's prefix,
//!    which that request wrote to the cache, so this one reads it;
//! 4. the last block of the final turn — the prefix the next turn will read.
//!
//! Rules: never more than four breakpoints in all (the client's included, and the top-level
//! automatic `cache_control` counts as one); a block the client marked is left as it is; every
//! `1h` breakpoint comes before every `5m` one (the API refuses otherwise); a prefix shorter than
//! the model's minimum cacheable length is not marked (caching it would do nothing); blocks that
//! cannot carry `cache_control` (thinking, redacted thinking, empty text) are skipped. The body is
//! only rewritten when at least one breakpoint is added.

use serde_json::{Value, json};

/// A prompt-cache lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ttl {
    /// `5m`, the default.
    FiveMinutes,
    /// `1h`.
    OneHour,
}

impl Ttl {
    fn marker(self) -> Value {
        match self {
            Ttl::FiveMinutes => json!({"type": "ephemeral"}),
            Ttl::OneHour => json!({"type": "ephemeral", "ttl": "1h"}),
        }
    }

    fn of(marker: &Value) -> Ttl {
        if marker.get("ttl").and_then(Value::as_str) == Some("1h") {
            Ttl::OneHour
        } else {
            Ttl::FiveMinutes
        }
    }
}

pub use rampart_api::prompt_cache::MAX_BREAKPOINTS;

/// A breakpoint policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// TTL for the tools and system breakpoints (stable prefixes).
    pub static_ttl: Ttl,
    /// TTL for the conversation breakpoints.
    pub conversation_ttl: Ttl,
    /// Minimum cacheable prefix per model id prefix (`model == p` or `model` starts with `p-`).
    pub minimums: Vec<(String, u64)>,
    /// Minimum for models not in `minimums`.
    pub default_min_tokens: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            static_ttl: Ttl::FiveMinutes,
            conversation_ttl: Ttl::FiveMinutes,
            minimums: rampart_api::prompt_cache::MIN_CACHEABLE_TOKENS
                .iter()
                .map(|(m, n)| ((*m).to_owned(), *n))
                .collect(),
            default_min_tokens: rampart_api::prompt_cache::DEFAULT_MIN_CACHEABLE_TOKENS,
        }
    }
}

impl Policy {
    /// The minimum cacheable prefix for `model`.
    #[must_use]
    pub fn min_tokens(&self, model: &str) -> u64 {
        rampart_api::prompt_cache::min_cacheable_tokens_in(
            &self.minimums,
            self.default_min_tokens,
            model,
        )
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Applied {
    /// Breakpoints the client had set.
    pub existing: usize,
    /// Breakpoints added, as `(path, ttl)` for logs and tests (e.g. `tools[2]`, `messages[3].content[0]`).
    pub added: Vec<(String, Ttl)>,
}

/// A place that can carry a breakpoint, in prefix order, with the estimated tokens up to and
/// including it.
struct Slot {
    path: String,
    tokens_through: u64,
    marked: Option<Ttl>,
    markable: bool,
    kind: SlotKind,
}

#[derive(PartialEq)]
enum SlotKind {
    Tool,
    System,
    Message { turn: usize, last_in_turn: bool },
}

/// Estimated tokens of a JSON value: a quarter of its serialised length, images and documents at
/// a flat rate (what matters here is only the order of magnitude against the minimum).
fn estimate(v: &Value) -> u64 {
    match v.get("type").and_then(Value::as_str) {
        Some("image") => 1600,
        Some("document") => 3000,
        _ => (v.to_string().len() as u64).div_ceil(4),
    }
}

fn markable_block(b: &Value) -> bool {
    match b.get("type").and_then(Value::as_str) {
        Some("thinking" | "redacted_thinking") => false,
        Some("text") => b
            .get("text")
            .and_then(Value::as_str)
            .is_some_and(|t| !t.is_empty()),
        Some(_) => true,
        None => false,
    }
}

fn slots(body: &Value) -> Vec<Slot> {
    let mut out = Vec::new();
    let mut total = 0u64;
    if let Some(tools) = body.get("tools").and_then(Value::as_array) {
        for (i, t) in tools.iter().enumerate() {
            total += estimate(t);
            out.push(Slot {
                path: format!("tools[{i}]"),
                tokens_through: total,
                marked: t.get("cache_control").map(Ttl::of),
                markable: true,
                kind: SlotKind::Tool,
            });
        }
    }
    match body.get("system") {
        Some(Value::String(s)) => {
            // A string system prompt has no block to mark; it becomes one when marked.
            total += (s.len() as u64).div_ceil(4);
            out.push(Slot {
                path: "system".to_owned(),
                tokens_through: total,
                marked: None,
                markable: !s.is_empty(),
                kind: SlotKind::System,
            });
        }
        Some(Value::Array(blocks)) => {
            for (i, b) in blocks.iter().enumerate() {
                total += estimate(b);
                out.push(Slot {
                    path: format!("system[{i}]"),
                    tokens_through: total,
                    marked: b.get("cache_control").map(Ttl::of),
                    markable: markable_block(b),
                    kind: SlotKind::System,
                });
            }
        }
        _ => {}
    }
    if let Some(messages) = body.get("messages").and_then(Value::as_array) {
        for (turn, m) in messages.iter().enumerate() {
            match m.get("content") {
                Some(Value::String(s)) => {
                    total += (s.len() as u64).div_ceil(4) + 4;
                    out.push(Slot {
                        path: format!("messages[{turn}]"),
                        tokens_through: total,
                        marked: None,
                        markable: !s.is_empty(),
                        kind: SlotKind::Message {
                            turn,
                            last_in_turn: true,
                        },
                    });
                }
                Some(Value::Array(blocks)) => {
                    let n = blocks.len();
                    for (i, b) in blocks.iter().enumerate() {
                        total += estimate(b);
                        out.push(Slot {
                            path: format!("messages[{turn}].content[{i}]"),
                            tokens_through: total,
                            marked: b.get("cache_control").map(Ttl::of),
                            markable: markable_block(b),
                            kind: SlotKind::Message {
                                turn,
                                last_in_turn: i + 1 == n,
                            },
                        });
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// Whether every `1h` breakpoint precedes every `5m` one.
fn well_ordered(ttls: &[Ttl]) -> bool {
    ttls.windows(2).all(|w| w[0] >= w[1])
}

/// Add breakpoints to `body` per `policy` (see the module docs). Returns what was done; the body
/// is untouched when nothing is added.
pub fn apply(body: &mut Value, policy: &Policy) -> Applied {
    let Some(model) = body.get("model").and_then(Value::as_str) else {
        return Applied::default();
    };
    let min = policy.min_tokens(model);
    let all = slots(body);
    let top_level = usize::from(body.get("cache_control").is_some());
    let existing = all.iter().filter(|s| s.marked.is_some()).count() + top_level;
    let mut applied = Applied {
        existing,
        added: Vec::new(),
    };
    // A top-level automatic breakpoint places itself; mixing ours in could break its ordering.
    if top_level > 0 || existing >= MAX_BREAKPOINTS {
        return applied;
    }
    let user_turns: Vec<usize> = body
        .get("messages")
        .and_then(Value::as_array)
        .map(|ms| {
            ms.iter()
                .enumerate()
                .filter(|(_, m)| m.get("role").and_then(Value::as_str) == Some("user"))
                .map(|(i, _)| i)
                .collect()
        })
        .unwrap_or_default();
    let last_turn = body
        .get("messages")
        .and_then(Value::as_array)
        .map_or(0, |m| m.len().saturating_sub(1));
    let previous_user_turn = user_turns.iter().rev().nth(1).copied();
    let last_of = |kind: &dyn Fn(&SlotKind) -> bool| all.iter().rposition(|s| kind(&s.kind));
    let mut wanted: Vec<(usize, Ttl)> = Vec::new();
    if let Some(i) = last_of(&|k| *k == SlotKind::Tool) {
        wanted.push((i, policy.static_ttl));
    }
    if let Some(i) = last_of(&|k| *k == SlotKind::System) {
        wanted.push((i, policy.static_ttl));
    }
    if let Some(turn) = previous_user_turn
        && let Some(i) = last_of(
            &|k| matches!(k, SlotKind::Message { turn: t, last_in_turn: true } if *t == turn),
        )
    {
        wanted.push((i, policy.conversation_ttl));
    }
    if let Some(i) = last_of(
        &|k| matches!(k, SlotKind::Message { turn: t, last_in_turn: true } if *t == last_turn),
    ) {
        wanted.push((i, policy.conversation_ttl));
    }
    wanted.sort_by_key(|(i, _)| *i);
    wanted.dedup_by_key(|(i, _)| *i);
    // Current breakpoints in prefix order, to check ordering as ours are added.
    let mut chosen: Vec<(usize, Ttl)> = all
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.marked.map(|t| (i, t)))
        .collect();
    for (i, ttl) in wanted {
        if chosen.len() >= MAX_BREAKPOINTS {
            break;
        }
        let slot = &all[i];
        if slot.marked.is_some() || !slot.markable || slot.tokens_through < min {
            continue;
        }
        // Try the policy's TTL, then 5m (valid after any 1h), keeping 1h-before-5m.
        let fits = [ttl, Ttl::FiveMinutes].into_iter().find(|t| {
            let mut trial = chosen.clone();
            trial.push((i, *t));
            trial.sort_by_key(|(j, _)| *j);
            well_ordered(&trial.iter().map(|(_, t)| *t).collect::<Vec<_>>())
        });
        if let Some(t) = fits {
            chosen.push((i, t));
            chosen.sort_by_key(|(j, _)| *j);
            applied.added.push((slot.path.clone(), t));
        }
    }
    for (path, ttl) in &applied.added {
        mark(body, path, *ttl);
    }
    applied
}

/// Put `cache_control` on the block at `path` (as produced by [`slots`]); a string system prompt
/// or message content becomes a single text block first.
fn mark(body: &mut Value, path: &str, ttl: Ttl) {
    let marker = ttl.marker();
    if path == "system" {
        if let Some(Value::String(s)) = body.get("system").cloned() {
            body["system"] = json!([{"type": "text", "text": s, "cache_control": marker}]);
        }
        return;
    }
    let index =
        |s: &str| -> Option<usize> { s.split('[').nth(1)?.trim_end_matches(']').parse().ok() };
    let mut parts = path.split('.');
    let Some(head) = parts.next() else { return };
    let Some(i) = index(head) else { return };
    let target = if head.starts_with("tools") {
        body.get_mut("tools").and_then(|t| t.get_mut(i))
    } else if head.starts_with("system") {
        body.get_mut("system").and_then(|t| t.get_mut(i))
    } else {
        let msg = body.get_mut("messages").and_then(|m| m.get_mut(i));
        match (msg, parts.next()) {
            (Some(m), Some(content)) => {
                index(content).and_then(move |j| m.get_mut("content").and_then(|c| c.get_mut(j)))
            }
            (Some(m), None) => {
                if let Some(Value::String(s)) = m.get("content").cloned() {
                    m["content"] = json!([{"type": "text", "text": s, "cache_control": marker}]);
                }
                return;
            }
            (None, _) => None,
        }
    };
    if let Some(Value::Object(block)) = target {
        block.insert("cache_control".to_owned(), marker);
    }
}

/// Breakpoints in a body, in prefix order (for tests and logs).
#[must_use]
pub fn breakpoints(body: &Value) -> Vec<(String, Ttl)> {
    slots(body)
        .into_iter()
        .filter_map(|s| s.marked.map(|t| (s.path, t)))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn long(words: usize) -> String {
        "lorem ipsum dolor sit amet ".repeat(words / 5 + 1)
    }

    fn chat(turns: usize) -> Value {
        let mut messages = Vec::new();
        for i in 0..turns {
            messages
                .push(json!({"role": "user", "content": format!("question {i}: {}", long(400))}));
            if i + 1 < turns {
                messages.push(json!({"role": "assistant", "content": [{"type": "text", "text": format!("answer {i}")}]}));
            }
        }
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 100,
            "tools": [{"name": "a", "input_schema": {"type": "object"}}, {"name": "b", "description": long(3000), "input_schema": {"type": "object"}}],
            "system": long(3000),
            "messages": messages,
        })
    }

    #[test]
    fn a_multi_turn_chat_gets_tools_system_and_both_conversation_breakpoints() {
        let mut body = chat(3);
        let policy = Policy {
            static_ttl: Ttl::OneHour,
            ..Policy::default()
        };
        let applied = apply(&mut body, &policy);
        assert_eq!(applied.existing, 0);
        let got = breakpoints(&body);
        assert_eq!(
            got,
            vec![
                ("tools[1]".to_owned(), Ttl::OneHour),
                ("system[0]".to_owned(), Ttl::OneHour),
                ("messages[2].content[0]".to_owned(), Ttl::FiveMinutes),
                ("messages[4].content[0]".to_owned(), Ttl::FiveMinutes),
            ]
        );
        assert_eq!(applied.added.len(), got.len());
        // The string system prompt became a block with the text unchanged.
        assert_eq!(body["system"][0]["type"], "text");
        assert!(
            body["system"][0]["text"]
                .as_str()
                .unwrap()
                .starts_with("lorem")
        );
        // Applying again adds nothing (four already there).
        let again = apply(&mut body, &policy);
        assert_eq!((again.existing, again.added.len()), (4, 0));
    }

    #[test]
    fn client_breakpoints_are_respected_and_the_total_never_exceeds_four() {
        let mut body = chat(3);
        body["messages"][0]["content"] =
            json!([{"type": "text", "text": long(400), "cache_control": {"type": "ephemeral"}}]);
        body["tools"][0]["cache_control"] = json!({"type": "ephemeral", "ttl": "1h"});
        let applied = apply(
            &mut body,
            &Policy {
                static_ttl: Ttl::OneHour,
                ..Policy::default()
            },
        );
        assert_eq!(applied.existing, 2);
        let all = breakpoints(&body);
        assert!(all.len() <= MAX_BREAKPOINTS, "{all:?}");
        assert_eq!(all.len(), 4);
        // The client's marks are unchanged.
        assert_eq!(
            body["tools"][0]["cache_control"],
            json!({"type": "ephemeral", "ttl": "1h"})
        );
        assert_eq!(
            body["messages"][0]["content"][0]["cache_control"],
            json!({"type": "ephemeral"})
        );
        // 1h never after 5m (the client's 5m mark is on the first turn, after tools and system).
        let ttls: Vec<Ttl> = all.iter().map(|(_, t)| *t).collect();
        assert!(well_ordered(&ttls), "{all:?}");
    }

    #[test]
    fn short_prefixes_and_top_level_auto_caching_are_left_alone() {
        let mut short = json!({"model": "claude-haiku-4-5", "max_tokens": 10, "system": "be brief", "messages": [{"role": "user", "content": "hi"}]});
        let before = short.clone();
        assert!(apply(&mut short, &Policy::default()).added.is_empty());
        assert_eq!(short, before, "nothing added, nothing rewritten");

        let mut auto = chat(2);
        auto["cache_control"] = json!({"type": "ephemeral"});
        let before = auto.clone();
        let applied = apply(&mut auto, &Policy::default());
        assert_eq!((applied.existing, applied.added.len()), (1, 0));
        assert_eq!(auto, before);
    }

    #[test]
    fn thinking_and_empty_blocks_are_never_marked() {
        let mut body = chat(2);
        body["messages"][1]["content"] =
            json!([{"type": "thinking", "thinking": long(100), "signature": "s"}]);
        body["messages"][2]["content"] =
            json!([{"type": "text", "text": long(400)}, {"type": "text", "text": ""}]);
        apply(&mut body, &Policy::default());
        for (path, _) in breakpoints(&body) {
            assert_ne!(path, "messages[1].content[0]");
            assert_ne!(path, "messages[2].content[1]");
        }
    }

    #[test]
    fn model_minimums_come_from_the_table_longest_prefix_first() {
        let p = Policy::default();
        assert_eq!(p.min_tokens("claude-haiku-4-5"), 4096);
        assert_eq!(p.min_tokens("claude-haiku-4-5-20251001"), 4096);
        assert_eq!(p.min_tokens("claude-opus-5"), 512);
        assert_eq!(p.min_tokens("claude-opus-5-5"), 512);
        assert_eq!(p.min_tokens("claude-sonnet-4-6"), 2048);
        assert_eq!(p.min_tokens("some-new-model"), 1024);
    }
}
