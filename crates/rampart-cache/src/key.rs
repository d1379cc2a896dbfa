//! The response-cache key: a SHA-256 over the tenant, the `anthropic-beta` flags and the canonical
//! form of every request field that can change the answer.
//!
//! Canonical form: the body as JSON with object keys sorted at every depth (so `{"a":1,"b":2}` and
//! `{"b":2,"a":1}` are one request), numbers and strings as parsed, arrays in order. Two fields are
//! left out because they cannot change the answer's content: `stream` (a streamed and a plain
//! request share entries; the cache replays either shape) and `metadata` (an opaque end-user id).
//! Everything else counts, including fields this version does not know — a new sampling parameter
//! must never make two different requests collide.
//!
//! The team is part of the hashed input, not a prefix of the stored key, so no lookup by any key
//! can reach another team's entry.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Fields that never change the answer's content.
const IGNORED: [&str; 2] = ["stream", "metadata"];

/// Bumped whenever the canonical form changes, so old entries simply stop matching.
const VERSION: &[u8] = b"rampart-response-cache-v1";

/// A cache key (hex SHA-256).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(pub String);

impl std::fmt::Display for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a body has no key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not a JSON object.
    #[error("the request body is not a JSON object")]
    NotAnObject,
}

/// The key of `body` for `tenant` (the team id) with the request's `anthropic-beta` header values.
///
/// # Errors
/// [`KeyError::NotAnObject`] when the body is not a JSON object.
pub fn cache_key(tenant: &str, betas: &[&str], body: &[u8]) -> Result<CacheKey, KeyError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| KeyError::NotAnObject)?;
    key_of(tenant, betas, &value)
}

/// As [`cache_key`], for an already parsed body.
///
/// # Errors
/// [`KeyError::NotAnObject`] when the body is not a JSON object.
pub fn key_of(tenant: &str, betas: &[&str], body: &Value) -> Result<CacheKey, KeyError> {
    let Value::Object(fields) = body else {
        return Err(KeyError::NotAnObject);
    };
    let mut h = Sha256::new();
    h.update(VERSION);
    h.update([0]);
    // Length-prefixed, so no tenant/flag text can be shifted into another field.
    h.update((tenant.len() as u64).to_be_bytes());
    h.update(tenant.as_bytes());
    let mut flags: Vec<&str> = betas
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .collect();
    flags.sort_unstable();
    flags.dedup();
    h.update((flags.len() as u64).to_be_bytes());
    for f in flags {
        h.update((f.len() as u64).to_be_bytes());
        h.update(f.as_bytes());
    }
    let mut canonical = Map::new();
    let mut names: Vec<&String> = fields
        .keys()
        .filter(|k| !IGNORED.contains(&k.as_str()))
        .collect();
    names.sort_unstable();
    for name in names {
        if let Some(v) = fields.get(name) {
            canonical.insert(name.clone(), sorted(v));
        }
    }
    let text = serde_json::to_vec(&Value::Object(canonical)).map_err(|_| KeyError::NotAnObject)?;
    h.update(text);
    Ok(CacheKey(hex::encode(h.finalize())))
}

/// `v` with every object's keys in sorted order.
fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut names: Vec<&String> = m.keys().collect();
            names.sort_unstable();
            let mut out = Map::new();
            for n in names {
                if let Some(x) = m.get(n) {
                    out.insert(n.clone(), sorted(x));
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn base() -> Value {
        json!({
            "model": "claude-sonnet-4-6",
            "max_tokens": 256,
            "system": [{"type": "text", "text": "You are terse."}],
            "messages": [
                {"role": "user", "content": "What is 2+2?"},
                {"role": "assistant", "content": "4"},
                {"role": "user", "content": [{"type": "text", "text": "And 3+3?"}]}
            ],
            "tools": [{"name": "calc", "description": "adds", "input_schema": {"type": "object", "properties": {"a": {"type": "number"}}}}],
            "tool_choice": {"type": "auto"},
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 40,
            "stop_sequences": ["END"],
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "stream": false,
            "metadata": {"user_id": "u-1"}
        })
    }

    fn key(tenant: &str, v: &Value) -> CacheKey {
        key_of(tenant, &[], v).unwrap()
    }

    #[test]
    fn key_order_stream_and_metadata_do_not_matter() {
        let a = base();
        let mut b = json!({});
        // Same fields, reversed insertion order, nested objects reordered too.
        for (k, v) in a.as_object().unwrap().iter().rev() {
            b[k] = v.clone();
        }
        b["tool_choice"] = json!({"type": "auto"});
        b["stream"] = json!(true);
        b["metadata"] = json!({"user_id": "someone else"});
        assert_eq!(key("team-a", &a), key("team-a", &b));
        let mut c = a.clone();
        c.as_object_mut().unwrap().remove("stream");
        c.as_object_mut().unwrap().remove("metadata");
        assert_eq!(key("team-a", &a), key("team-a", &c));
    }

    #[test]
    fn the_tenant_and_beta_flags_are_part_of_the_key() {
        let a = base();
        assert_ne!(key("team-a", &a), key("team-b", &a));
        let with_beta = key_of("team-a", &["extended-cache-ttl-2025-04-11"], &a).unwrap();
        assert_ne!(key("team-a", &a), with_beta);
        // Flag order, repetition and header splitting do not matter.
        assert_eq!(
            key_of("t", &["b, a", "a"], &a).unwrap(),
            key_of("t", &["a,b"], &a).unwrap()
        );
        // A tenant cannot borrow bytes from the flags.
        assert_ne!(
            key_of("ab", &["c"], &a).unwrap(),
            key_of("a", &["bc"], &a).unwrap()
        );
    }

    #[test]
    fn only_objects_have_keys() {
        assert_eq!(cache_key("t", &[], b"[1]"), Err(KeyError::NotAnObject));
        assert_eq!(cache_key("t", &[], b"nope"), Err(KeyError::NotAnObject));
        assert!(cache_key("t", &[], br#"{"model":"m"}"#).is_ok());
    }

    /// Every field that can change the answer, each with a way to change it.
    type Mutation = (&'static str, fn(&mut Value));

    fn mutations() -> Vec<Mutation> {
        vec![
            ("model", |v| v["model"] = json!("claude-haiku-4-5")),
            ("max_tokens", |v| v["max_tokens"] = json!(257)),
            ("system text", |v| {
                v["system"][0]["text"] = json!("You are verbose.")
            }),
            ("system cache_control", |v| {
                v["system"][0]["cache_control"] = json!({"type": "ephemeral"})
            }),
            ("message text", |v| {
                v["messages"][0]["content"] = json!("What is 2+3?")
            }),
            ("message role", |v| v["messages"][1]["role"] = json!("user")),
            ("message order", |v| {
                v["messages"].as_array_mut().unwrap().swap(0, 2)
            }),
            ("extra turn", |v| {
                v["messages"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"role": "assistant", "content": "6"}))
            }),
            ("block type", |v| {
                v["messages"][2]["content"][0]["type"] = json!("image")
            }),
            ("tools", |v| {
                v["tools"][0]["description"] = json!("subtracts")
            }),
            ("tool schema", |v| {
                v["tools"][0]["input_schema"]["properties"]["b"] = json!({"type": "string"})
            }),
            ("no tools", |v| {
                v.as_object_mut().unwrap().remove("tools");
            }),
            ("tool_choice", |v| v["tool_choice"] = json!({"type": "any"})),
            ("temperature", |v| v["temperature"] = json!(0.7)),
            ("top_p", |v| v["top_p"] = json!(0.95)),
            ("top_k", |v| v["top_k"] = json!(41)),
            ("stop_sequences", |v| v["stop_sequences"] = json!(["STOP"])),
            ("thinking", |v| v["thinking"]["budget_tokens"] = json!(2048)),
            ("thinking off", |v| {
                v["thinking"] = json!({"type": "disabled"})
            }),
            ("unknown field", |v| v["service_tier"] = json!("priority")),
        ]
    }

    #[test]
    fn changing_any_field_that_can_change_the_answer_changes_the_key() {
        let original = key("t", &base());
        for (name, mutate) in mutations() {
            let mut v = base();
            mutate(&mut v);
            assert_ne!(key("t", &v), original, "{name} did not change the key");
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            "[a-z ]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Any change to the value of a counted field, anywhere inside it, changes the key.
        #[test]
        fn any_value_change_changes_the_key(field in "[a-z_]{1,12}", a in arb_json(), b in arb_json()) {
            prop_assume!(!IGNORED.contains(&field.as_str()));
            prop_assume!(sorted(&a) != sorted(&b));
            let mut x = base();
            let mut y = base();
            x[&field] = a;
            y[&field] = b;
            prop_assert_ne!(key("t", &x), key("t", &y));
        }

        /// Tenants never share a key for any body.
        #[test]
        fn tenants_never_share_keys(t1 in "[a-f0-9-]{1,36}", t2 in "[a-f0-9-]{1,36}", v in arb_json()) {
            prop_assume!(t1 != t2);
            let mut body = base();
            body["x"] = v;
            prop_assert_ne!(key(&t1, &body), key(&t2, &body));
        }
    }
}
