//! Data-plane authentication: who is calling, from the `x-api-key` or `Authorization: Bearer` header.
//!
//! This issue's [`StaticKeys`] holds SHA-256 digests of keys from config and compares every
//! candidate in constant time. The identity store of a later issue implements the same
//! [`Authenticator`] trait, so the proxy does not change.

use std::collections::BTreeSet;
use std::sync::Arc;

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::secret::Secret;

/// SHA-256 digest of a client key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApiKeyHash([u8; 32]);

impl ApiKeyHash {
    /// Digest of `key`.
    #[must_use]
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// Parse a 64-character hex digest.
    #[must_use]
    pub fn from_hex(hex_digest: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_digest.trim(), &mut out).ok()?;
        Some(Self(out))
    }

    /// Hex form (for `auth.api_key_hashes`).
    #[must_use]
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// The caller behind a request.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Short, non-secret label of the key (first 8 hex chars of its digest), for logs.
    pub key_label: Arc<str>,
}

/// Why authentication failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No credential header at all.
    Missing,
    /// A credential that is not accepted.
    Invalid,
}

/// Resolves a presented credential to an identity.
pub trait Authenticator: Send + Sync + 'static {
    /// The identity for `credential`, or `None` when it is not accepted.
    fn authenticate(&self, credential: &str) -> Option<Identity>;
}

/// Keys from configuration, held as digests.
///
/// Checking a key costs a SHA-256 (about a microsecond on CPUs without SHA extensions); the
/// [`VerifiedCache`] in front of it remembers credentials that already verified, so the hot path
/// is a keyed 64-bit hash lookup plus a constant-time comparison.
#[derive(Debug, Clone, Default)]
pub struct StaticKeys {
    /// Digest and its log label, computed once.
    keys: Vec<(ApiKeyHash, Arc<str>)>,
    verified: Arc<VerifiedCache>,
}

/// Credentials that already verified, keyed by a randomly seeded 64-bit hash. Entries hold the
/// credential as a [`Secret`] (zeroed on drop) and are compared in constant time; only successes
/// are cached, so failed guesses cannot fill it. Bounded: when full it is cleared.
#[derive(Debug, Default)]
pub struct VerifiedCache {
    state: std::hash::RandomState,
    map: std::sync::RwLock<std::collections::HashMap<u64, (Secret, Identity)>>,
}

const VERIFIED_CACHE_MAX: usize = 10_000;

impl VerifiedCache {
    fn slot(&self, credential: &str) -> u64 {
        use std::hash::BuildHasher;
        self.state.hash_one(credential)
    }

    fn get(&self, credential: &str) -> Option<Identity> {
        let slot = self.slot(credential);
        let map = self.map.read().ok()?;
        let (secret, identity) = map.get(&slot)?;
        let stored = secret.expose().as_bytes();
        (stored.len() == credential.len() && bool::from(stored.ct_eq(credential.as_bytes())))
            .then(|| identity.clone())
    }

    fn put(&self, credential: &str, identity: &Identity) {
        let slot = self.slot(credential);
        if let Ok(mut map) = self.map.write() {
            if map.len() >= VERIFIED_CACHE_MAX {
                map.clear();
            }
            map.insert(slot, (Secret::new(credential.to_owned()), identity.clone()));
        }
    }
}

impl StaticKeys {
    /// From a set of digests.
    #[must_use]
    pub fn new(hashes: BTreeSet<ApiKeyHash>) -> Self {
        Self {
            keys: hashes
                .into_iter()
                .map(|h| {
                    let label = Arc::from(&h.to_hex()[..8]);
                    (h, label)
                })
                .collect(),
            verified: Arc::default(),
        }
    }

    /// Number of accepted keys.
    #[must_use]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is accepted.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl Authenticator for StaticKeys {
    fn authenticate(&self, credential: &str) -> Option<Identity> {
        if let Some(identity) = self.verified.get(credential) {
            return Some(identity);
        }
        let candidate = ApiKeyHash::of(credential);
        // Compare against every key without early exit, so timing does not depend on which matched.
        let mut found: Option<&Arc<str>> = None;
        for (h, label) in &self.keys {
            if bool::from(h.0.ct_eq(&candidate.0)) {
                found = Some(label);
            }
        }
        let identity = found.map(|label| Identity {
            key_label: label.clone(),
        })?;
        self.verified.put(credential, &identity);
        Some(identity)
    }
}

/// The credential a client presented: `x-api-key`, else `Authorization: Bearer`.
///
/// # Errors
/// [`AuthFailure::Missing`] when neither header carries a non-empty value.
pub fn credential(headers: &HeaderMap) -> Result<&str, AuthFailure> {
    if let Some(v) = headers.get("x-api-key") {
        return match v.to_str() {
            Ok(s) if !s.trim().is_empty() => Ok(s.trim()),
            Ok(_) => Err(AuthFailure::Missing),
            Err(_) => Err(AuthFailure::Invalid),
        };
    }
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let s = v.to_str().map_err(|_| AuthFailure::Invalid)?;
        let token = s
            .strip_prefix("Bearer ")
            .or_else(|| s.strip_prefix("bearer "))
            .ok_or(AuthFailure::Invalid)?
            .trim();
        if token.is_empty() {
            return Err(AuthFailure::Missing);
        }
        return Ok(token);
    }
    Err(AuthFailure::Missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[&str]) -> StaticKeys {
        StaticKeys::new(list.iter().map(|k| ApiKeyHash::of(k)).collect())
    }

    #[test]
    fn accepts_a_configured_key_and_rejects_others() {
        let k = keys(&["rk_alpha_0123456789", "rk_beta_0123456789"]);
        assert!(k.authenticate("rk_beta_0123456789").is_some());
        assert!(k.authenticate("rk_beta_012345678").is_none());
        assert!(k.authenticate("").is_none());
    }

    #[test]
    fn cached_credentials_still_need_an_exact_match() {
        let k = keys(&["rk_alpha_0123456789"]);
        assert!(k.authenticate("rk_alpha_0123456789").is_some());
        // Second time from the cache; near-misses are never served from it.
        assert!(k.authenticate("rk_alpha_0123456789").is_some());
        assert!(k.authenticate("rk_alpha_012345678X").is_none());
        assert!(k.authenticate("rk_alpha_01234567890").is_none());
        assert_eq!(k.verified.map.read().unwrap().len(), 1);
    }

    #[test]
    fn label_is_a_digest_prefix_not_the_key() {
        let id = keys(&["rk_alpha_0123456789"])
            .authenticate("rk_alpha_0123456789")
            .unwrap();
        assert_eq!(id.key_label.len(), 8);
        assert!(!"rk_alpha_0123456789".contains(&*id.key_label));
    }

    #[test]
    fn hex_round_trips() {
        let h = ApiKeyHash::of("x");
        assert_eq!(ApiKeyHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(ApiKeyHash::from_hex("zz"), None);
    }

    #[test]
    fn credential_prefers_x_api_key_then_bearer() {
        let mut h = HeaderMap::new();
        assert_eq!(credential(&h), Err(AuthFailure::Missing));
        h.insert("authorization", "Bearer tok".parse().unwrap());
        assert_eq!(credential(&h), Ok("tok"));
        h.insert("x-api-key", "key".parse().unwrap());
        assert_eq!(credential(&h), Ok("key"));
        let mut basic = HeaderMap::new();
        basic.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(credential(&basic), Err(AuthFailure::Invalid));
    }
}
