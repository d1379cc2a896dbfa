//! One format for the symmetric keys an operator supplies (the master key, the JWT signing key):
//!
//! ```text
//! SPEC  := ENTRY ( "," ENTRY )*
//! ENTRY := [ ID ":" ] MATERIAL          ID: 1-64 of [A-Za-z0-9_.-]
//! MATERIAL := 32+ random bytes as hex or base64 (standard or URL-safe, padding optional)
//! ```
//!
//! The first entry is the current key (it encrypts or signs); the others only decrypt or verify,
//! which is how keys rotate. An entry without an id gets `k-` and the first 8 hex characters of
//! the SHA-256 of its bytes, so the same material always has the same id.
//!
//! A weak key is refused with a message that names the entry but never shows it: fewer than 32
//! bytes, or fewer than 16 distinct byte values (`"0000…"`, a repeated pattern, a word).
//! Generate one with `openssl rand -base64 32` or `rampart keygen`.

use base64::Engine;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::Secret;

/// Minimum key length in bytes.
pub const MIN_BYTES: usize = 32;

/// One parsed key: its id and its bytes (zeroed on drop).
pub struct KeyEntry {
    /// The key id (`kid` for JWTs, `key_id` for sealed values).
    pub id: String,
    /// The key bytes.
    pub bytes: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEntry")
            .field("id", &self.id)
            .field("bytes", &format_args!("<{} bytes>", self.bytes.len()))
            .finish()
    }
}

/// Parse a key spec (see the module docs). `what` names the setting in error messages.
///
/// # Errors
/// A message naming the setting and the entry's position or id, never its value.
pub fn parse(spec: &Secret, what: &str) -> Result<Vec<KeyEntry>, String> {
    let mut out: Vec<KeyEntry> = Vec::new();
    for (i, raw) in spec.expose().split(',').enumerate() {
        let raw = raw.trim();
        if raw.is_empty() {
            continue;
        }
        let (id, material) = match raw.split_once(':') {
            Some((id, m)) => {
                if id.is_empty()
                    || id.len() > 64
                    || !id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
                {
                    return Err(format!(
                        "{what}: entry {} has an invalid key id (1-64 of A-Z a-z 0-9 _ . -)",
                        i + 1
                    ));
                }
                (Some(id.to_owned()), m.trim())
            }
            None => (None, raw),
        };
        let label = id.clone().unwrap_or_else(|| format!("entry {}", i + 1));
        let bytes = decode(material).ok_or_else(|| {
            format!(
                "{what}: key {label} is not hex or base64 (generate one with `openssl rand -base64 32`)"
            )
        })?;
        check_strength(&bytes).map_err(|why| format!("{what}: key {label} is weak: {why}"))?;
        let id = id.unwrap_or_else(|| fingerprint_id(&bytes));
        if out.iter().any(|e| e.id == id) {
            return Err(format!("{what}: key id `{id}` appears twice"));
        }
        out.push(KeyEntry { id, bytes });
    }
    if out.is_empty() {
        return Err(format!("{what} is empty"));
    }
    Ok(out)
}

/// The id an entry without one gets.
#[must_use]
pub fn fingerprint_id(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    format!("k-{}", hex::encode(&d[..4]))
}

/// A fresh key spec entry: 32 random bytes, standard base64 (what `rampart keygen` prints).
#[must_use]
pub fn generate() -> Secret {
    Secret::new(base64::engine::general_purpose::STANDARD.encode(crate::random_bytes::<32>()))
}

fn decode(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    if text.len() >= 2 * MIN_BYTES
        && text.len().is_multiple_of(2)
        && text.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return hex::decode(text).ok().map(Zeroizing::new);
    }
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(text).ok())
        .map(Zeroizing::new)
}

fn check_strength(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < MIN_BYTES {
        return Err(format!(
            "{} bytes, at least {MIN_BYTES} are required",
            bytes.len()
        ));
    }
    let mut seen = [false; 256];
    for &b in bytes {
        seen[usize::from(b)] = true;
    }
    let distinct = seen.iter().filter(|s| **s).count();
    if distinct < 16 {
        return Err("too little variety to be random".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Secret {
        Secret::new(v.to_owned())
    }

    #[test]
    fn bare_keys_get_a_stable_fingerprint_id() {
        let material = generate();
        let a = parse(&material, "RAMPART_MASTER_KEY").unwrap();
        let b = parse(&material, "RAMPART_MASTER_KEY").unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].id, b[0].id);
        assert!(a[0].id.starts_with("k-"));
        assert_eq!(a[0].bytes.len(), 32);
    }

    #[test]
    fn lists_with_ids_keep_their_order_and_hex_works() {
        let hex_key = hex::encode((0u8..32).collect::<Vec<_>>());
        let spec = format!("new:{}, old:{hex_key}", generate().expose());
        let keys = parse(&s(&spec), "X").unwrap();
        assert_eq!(
            keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
            ["new", "old"]
        );
        assert_eq!(keys[1].bytes[31], 31);
    }

    #[test]
    fn weak_or_malformed_keys_are_refused_without_echoing_them() {
        for bad in [
            "",
            "short",
            "correct horse battery staple correct horse battery",
            &"0".repeat(64),
            &base64::engine::general_purpose::STANDARD.encode([7u8; 48]),
            "bad id!:AAAA",
        ] {
            let err = parse(&s(bad), "RAMPART_JWT_SECRET").unwrap_err();
            assert!(err.starts_with("RAMPART_JWT_SECRET"), "{err}");
            if bad.len() > 8 {
                assert!(!err.contains(bad), "{err}");
            }
        }
        let dup = format!("a:{0},a:{0}", generate().expose());
        assert!(parse(&s(&dup), "X").unwrap_err().contains("twice"));
    }
}
