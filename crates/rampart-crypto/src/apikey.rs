//! Virtual API keys: `rk_<env>_<43 base64url chars>` (256 random bits), shown once, stored only as
//! HMAC-SHA256(pepper, key). The pepper is a server secret, so a leaked database alone cannot be
//! used to test guesses offline. Keys have high entropy, so a fast keyed hash is right (argon2
//! per request would be wasted work on the hot path).

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::Secret;

/// Characters of a key kept in clear for display (`rk_live_AbCd`).
pub const VISIBLE_PREFIX_LEN: usize = 12;

/// The keyed digest stored for a key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyDigest(pub [u8; 32]);

impl std::fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyDigest({}…)", &hex::encode(self.0)[..8])
    }
}

impl KeyDigest {
    /// Constant-time equality.
    #[must_use]
    pub fn ct_eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

/// A freshly generated key: the secret (show once) and what to store.
#[derive(Debug)]
pub struct NewKey {
    /// The full key, for the caller to show once.
    pub key: Secret,
    /// The visible prefix, for listings.
    pub prefix: String,
    /// The digest to store and look up by.
    pub digest: KeyDigest,
}

/// Computes key digests with the server's pepper.
#[derive(Clone)]
pub struct KeyHasher {
    pepper: Secret,
}

impl std::fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHasher([REDACTED])")
    }
}

/// Why a presented string is not a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    /// Not `rk_<env>_<body>`, or the body is not 43 base64url characters.
    #[error("not a Rampart API key")]
    Malformed,
}

impl KeyHasher {
    /// A hasher with `pepper` (at least 32 bytes of secret material).
    ///
    /// # Errors
    /// When the pepper is shorter than 32 bytes.
    pub fn new(pepper: Secret) -> Result<Self, String> {
        if pepper.expose().len() < 32 {
            return Err("the API key pepper must be at least 32 bytes".to_owned());
        }
        Ok(Self { pepper })
    }

    /// HMAC-SHA256(pepper, key).
    #[must_use]
    pub fn digest(&self, key: &str) -> KeyDigest {
        // HMAC accepts keys of any length; this cannot fail.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.pepper.expose().as_bytes())
            .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()));
        mac.update(key.as_bytes());
        KeyDigest(mac.finalize().into_bytes().into())
    }

    /// Generate a key for environment label `env` (`live`, `test`, `demo`; lowercase letters only).
    #[must_use]
    pub fn generate(&self, env: &str) -> NewKey {
        let env: String = env
            .chars()
            .filter(char::is_ascii_lowercase)
            .take(8)
            .collect();
        let env = if env.is_empty() {
            "live".to_owned()
        } else {
            env
        };
        let body =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crate::random_bytes::<32>());
        let key = format!("rk_{env}_{body}");
        let prefix = visible_prefix(&key);
        let digest = self.digest(&key);
        NewKey {
            key: Secret::new(key),
            prefix,
            digest,
        }
    }
}

/// The first [`VISIBLE_PREFIX_LEN`] characters, for display.
#[must_use]
pub fn visible_prefix(key: &str) -> String {
    key.chars().take(VISIBLE_PREFIX_LEN).collect()
}

/// Cheap shape check before any lookup: `rk_<env>_<43 base64url>`.
///
/// # Errors
/// [`KeyFormatError::Malformed`].
pub fn check_format(key: &str) -> Result<(), KeyFormatError> {
    let rest = key.strip_prefix("rk_").ok_or(KeyFormatError::Malformed)?;
    let (env, body) = rest.split_once('_').ok_or(KeyFormatError::Malformed)?;
    let env_ok = !env.is_empty() && env.len() <= 8 && env.bytes().all(|b| b.is_ascii_lowercase());
    let body_ok = body.len() == 43
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if env_ok && body_ok {
        Ok(())
    } else {
        Err(KeyFormatError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hasher() -> KeyHasher {
        KeyHasher::new(Secret::new("p".repeat(32))).unwrap()
    }

    #[test]
    fn generated_keys_have_256_bits_a_prefix_and_a_stable_digest() {
        let h = hasher();
        let k = h.generate("live");
        assert!(k.key.expose().starts_with("rk_live_"));
        assert_eq!(k.key.expose().len(), "rk_live_".len() + 43);
        assert_eq!(check_format(k.key.expose()), Ok(()));
        assert_eq!(k.prefix, &k.key.expose()[..12]);
        assert!(h.digest(k.key.expose()).ct_eq(&k.digest));
        assert_ne!(h.generate("live").key.expose(), k.key.expose());
    }

    #[test]
    fn digests_depend_on_the_pepper() {
        let other = KeyHasher::new(Secret::new("q".repeat(32))).unwrap();
        assert_ne!(hasher().digest("rk_live_x"), other.digest("rk_live_x"));
    }

    #[test]
    fn short_peppers_and_malformed_keys_are_refused() {
        assert!(KeyHasher::new(Secret::new("short".to_owned())).is_err());
        for bad in [
            "",
            "sk-ant-123",
            "rk_live_short",
            "rk__AAAA",
            "rk_LIVE_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            assert_eq!(check_format(bad), Err(KeyFormatError::Malformed), "{bad}");
        }
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let k = hasher().generate("test");
        let shown = format!("{k:?} {:?}", hasher());
        assert!(!shown.contains(&k.key.expose()[12..]), "{shown}");
        assert!(!shown.contains(&"p".repeat(32)));
    }
}
