//! Canonical hashing of JSON values: key order and number formatting never change the hash, and
//! `cache_control` fields can be left out (prompt-cache prefixes ignore them).

use std::fmt::Write as _;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

struct HashWriter<'a>(&'a mut Sha256);

impl std::fmt::Write for HashWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.update(s.as_bytes());
        Ok(())
    }
}

fn hash_str(h: &mut Sha256, s: &str) {
    h.update(b"s");
    h.update((s.len() as u64).to_le_bytes());
    h.update(s.as_bytes());
}

/// Feeds `v` into `h` canonically (object keys sorted; `cache_control` keys skipped if asked).
pub(crate) fn hash_value(h: &mut Sha256, v: &Value, skip_cache_control: bool) {
    match v {
        Value::Null => h.update(b"n"),
        Value::Bool(true) => h.update(b"T"),
        Value::Bool(false) => h.update(b"F"),
        Value::Number(n) => {
            h.update(b"#");
            let _ = write!(HashWriter(h), "{n};");
        }
        Value::String(s) => hash_str(h, s),
        Value::Array(items) => {
            h.update(b"[");
            h.update((items.len() as u64).to_le_bytes());
            for item in items {
                hash_value(h, item, skip_cache_control);
            }
        }
        Value::Object(map) => {
            h.update(b"{");
            let keep = |k: &String| !(skip_cache_control && k == "cache_control");
            if keys_sorted(map) {
                for (k, v) in map.iter().filter(|(k, _)| keep(k)) {
                    hash_str(h, k);
                    hash_value(h, v, skip_cache_control);
                }
            } else {
                let mut entries: Vec<(&String, &Value)> =
                    map.iter().filter(|(k, _)| keep(k)).collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                for (k, v) in entries {
                    hash_str(h, k);
                    hash_value(h, v, skip_cache_control);
                }
            }
            h.update(b"}");
        }
    }
}

fn keys_sorted(map: &Map<String, Value>) -> bool {
    let mut keys = map.keys();
    let Some(mut prev) = keys.next() else {
        return true;
    };
    for k in keys {
        if k < prev {
            return false;
        }
        prev = k;
    }
    true
}

/// Finishes a hash into 32 bytes.
pub(crate) fn finish(h: Sha256) -> [u8; 32] {
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn digest(v: &Value, skip: bool) -> [u8; 32] {
        let mut h = Sha256::new();
        hash_value(&mut h, v, skip);
        finish(h)
    }

    #[test]
    fn hash_ignores_cache_control_only_when_asked() {
        let a = json!({"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}});
        let b = json!({"type": "text", "text": "hi"});
        assert_eq!(digest(&a, true), digest(&b, true));
        assert_ne!(digest(&a, false), digest(&b, false));
    }

    #[test]
    fn hash_distinguishes_strings_from_numbers() {
        assert_ne!(digest(&json!("1"), false), digest(&json!(1), false));
        assert_ne!(
            digest(&json!(["ab", "c"]), false),
            digest(&json!(["a", "bc"]), false)
        );
    }
}
