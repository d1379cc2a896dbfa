//! Data-plane authentication: who is calling, from the `x-api-key` or `Authorization: Bearer` header.
//!
//! [`StaticKeys`] holds SHA-256 digests of keys from config and compares every candidate in
//! constant time; the store's [`crate::keydir::KeyDirectory`] implements the same
//! [`Authenticator`] trait. [`Authenticator::check`] also says why a credential was refused
//! ([`Denial`]), for the audit log only: clients always get the same 401.

use std::collections::BTreeSet;
use std::sync::Arc;

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

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
    /// Short, non-secret label of the key (first 8 hex chars of its digest, or its visible
    /// prefix), for logs.
    pub key_label: Arc<str>,
    /// What the key may do; `None` is unrestricted (keys from configuration).
    pub scopes: Option<Arc<Scopes>>,
    /// The store key's id; `None` for keys from configuration.
    pub key_id: Option<Uuid>,
    /// The team owning the store key; `None` for keys from configuration.
    pub team_id: Option<Uuid>,
    /// The user owning the store key, if any; `None` for keys from configuration.
    pub user_id: Option<Uuid>,
    /// The rate limits and budgets that apply to the key (its own or its team's defaults, and
    /// its team's); `None` when nothing limits it.
    pub limits: Option<Arc<rampart_limits::Policy>>,
    /// The key's and its team's caching policies from the store; `None` when neither is set.
    pub cache: Option<Arc<crate::response_cache::StoredPolicies>>,
}

impl Identity {
    /// An unrestricted identity with no store ids (a key from configuration).
    #[must_use]
    pub fn unscoped(key_label: Arc<str>) -> Self {
        Self {
            key_label,
            scopes: None,
            key_id: None,
            team_id: None,
            user_id: None,
            limits: None,
            cache: None,
        }
    }
}

/// Why a presented credential was refused. Only for the audit log: every one of these is the same
/// `401 authentication_error` on the wire, so a caller cannot probe which keys exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Denial {
    /// Not a known key (or not in any key format).
    Unknown,
    /// A store key past its expiry (including the old key after a rotation's overlap).
    Expired,
    /// A revoked store key.
    Revoked,
    /// A disabled store key.
    Disabled,
    /// A store key of a disabled team.
    TeamDisabled,
}

impl Denial {
    /// The audit `reason`: `unknown_key`, `expired`, `revoked`, `disabled`, `team_disabled`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown_key",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
            Self::Disabled => "disabled",
            Self::TeamDisabled => "team_disabled",
        }
    }
}

/// The API surface a key may call, as stored with virtual keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/messages`
    Messages,
    /// `/v1/messages/count_tokens`
    CountTokens,
    /// `/v1/messages/batches*`
    Batches,
    /// `/v1/models*`
    Models,
}

impl Endpoint {
    /// The stored name (`messages`, `count_tokens`, `batches`, `models`).
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "messages" => Some(Self::Messages),
            "count_tokens" => Some(Self::CountTokens),
            "batches" => Some(Self::Batches),
            "models" => Some(Self::Models),
            _ => None,
        }
    }

    /// The endpoint a route belongs to.
    #[must_use]
    pub fn of(route: crate::routes::Route) -> Option<Self> {
        use crate::routes::Route as R;
        match route {
            R::Messages => Some(Self::Messages),
            R::CountTokens => Some(Self::CountTokens),
            R::Models | R::Model => Some(Self::Models),
            R::Batches | R::Batch | R::BatchCancel | R::BatchResults => Some(Self::Batches),
            R::Unknown => None,
        }
    }
}

/// Allowed endpoints and model patterns of a key. Empty lists allow everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes {
    /// Allowed endpoints; empty = all.
    pub endpoints: Vec<Endpoint>,
    /// Allowed model patterns (`*` matches any run of characters); empty = all.
    pub models: Vec<String>,
}

impl Scopes {
    /// Whether `endpoint` may be called.
    #[must_use]
    pub fn allows_endpoint(&self, endpoint: Endpoint) -> bool {
        self.endpoints.is_empty() || self.endpoints.contains(&endpoint)
    }

    /// Whether `model` may be used.
    #[must_use]
    pub fn allows_model(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|p| glob(p, model))
    }
}

/// `*`-only glob matching (no other metacharacters). Checked on every request of a key with
/// model scopes, so it allocates nothing: the text before the first `*` is a prefix, the text
/// after the last a suffix, and the parts between are found in order.
pub(crate) fn glob(pattern: &str, text: &str) -> bool {
    let Some((first, tail)) = pattern.split_once('*') else {
        return pattern == text;
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let (middle, last) = tail.rsplit_once('*').unwrap_or(("", tail));
    for part in middle.split('*').filter(|p| !p.is_empty()) {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Tries each authenticator in turn.
#[derive(Clone)]
pub struct AnyOf(pub Vec<Arc<dyn Authenticator>>);

impl std::fmt::Debug for AnyOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AnyOf({} authenticators)", self.0.len())
    }
}

impl Authenticator for AnyOf {
    fn authenticate(&self, credential: &str) -> Option<Identity> {
        self.0.iter().find_map(|a| a.authenticate(credential))
    }

    /// The first identity found; else the most specific refusal (one that knew the key).
    fn check(&self, credential: &str) -> Result<Identity, Denial> {
        let mut denial = Denial::Unknown;
        for a in &self.0 {
            match a.check(credential) {
                Ok(identity) => return Ok(identity),
                Err(Denial::Unknown) => {}
                Err(d) => denial = d,
            }
        }
        Err(denial)
    }
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

    /// As [`Authenticator::authenticate`], saying why a credential is refused. The default knows
    /// no reason but [`Denial::Unknown`].
    ///
    /// # Errors
    /// The [`Denial`] when the credential is not accepted.
    fn check(&self, credential: &str) -> Result<Identity, Denial> {
        self.authenticate(credential).ok_or(Denial::Unknown)
    }
}

/// Keys from configuration, held as digests.
///
/// Checking a key costs a SHA-256 (about a microsecond on CPUs without SHA extensions); the
/// [`CredentialCache`] in front of it remembers credentials that already verified, so the hot path
/// is a keyed 64-bit hash lookup plus a constant-time comparison.
#[derive(Debug, Clone, Default)]
pub struct StaticKeys {
    /// Digest and its log label, computed once.
    keys: Vec<(ApiKeyHash, Arc<str>)>,
    verified: Arc<CredentialCache<Identity>>,
}

/// Credentials that already verified, with what their verification gave (`V`: a configuration
/// key's identity, a store key's peppered digest), so the next presentation skips the hash
/// (SHA-256 or HMAC-SHA-256). Keyed by a randomly seeded 64-bit hash of the credential; an entry
/// holds the credential itself as a [`Secret`] (zeroed on drop) and is only used after a
/// constant-time comparison with the whole presented credential, so a hash collision can never
/// stand in for a key. Callers cache successes only, so failed guesses cannot fill it.
///
/// Memory trade-off: at most [`CREDENTIAL_CACHE_MAX`] entries of roughly 150 bytes each (the key
/// string, the value, the map slot), ~1.5 MB at the bound; when full it is cleared and refills as
/// keys are presented again (one hash each).
#[derive(Debug)]
pub(crate) struct CredentialCache<V> {
    state: std::hash::RandomState,
    pub(crate) map: std::sync::RwLock<std::collections::HashMap<u64, (Secret, V), Spread>>,
}

impl<V> Default for CredentialCache<V> {
    fn default() -> Self {
        Self {
            state: std::hash::RandomState::default(),
            map: std::sync::RwLock::default(),
        }
    }
}

/// Bound of [`CredentialCache`].
const CREDENTIAL_CACHE_MAX: usize = 10_000;

impl<V: Clone> CredentialCache<V> {
    /// The credential's slot (a randomly seeded SipHash).
    pub(crate) fn slot(&self, credential: &str) -> u64 {
        use std::hash::BuildHasher;
        self.state.hash_one(credential)
    }

    /// The value cached for exactly `credential` (at `slot`).
    pub(crate) fn get(&self, slot: u64, credential: &str) -> Option<V> {
        let map = self
            .map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (secret, value) = map.get(&slot)?;
        let stored = secret.expose().as_bytes();
        (stored.len() == credential.len() && ct_eq_words(stored, credential.as_bytes()))
            .then(|| value.clone())
    }

    /// Remember that `credential` (at `slot`) verified to `value`.
    pub(crate) fn put(&self, slot: u64, credential: &str, value: V) {
        let mut map = self
            .map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= CREDENTIAL_CACHE_MAX && !map.contains_key(&slot) {
            map.clear();
        }
        map.insert(slot, (Secret::new(credential.to_owned()), value));
    }
}

/// Whether `a == b` (equal lengths), in constant time: 8 bytes at a time (subtle's byte slices
/// cost a barrier per byte), every word compared whatever the earlier ones gave.
fn ct_eq_words(a: &[u8], b: &[u8]) -> bool {
    debug_assert_eq!(a.len(), b.len());
    let word = |c: &[u8]| {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        u64::from_le_bytes(w)
    };
    let mut eq = subtle::Choice::from(1);
    for (x, y) in a.chunks(8).zip(b.chunks(8)) {
        eq &= word(x).ct_eq(&word(y));
    }
    bool::from(eq)
}

/// The hasher of maps whose keys are already uniformly spread secrets: peppered digests (HMAC
/// outputs) and [`CredentialCache`] slots (a randomly seeded SipHash). Hashing them again with
/// SipHash (~250 instructions a lookup) buys nothing: their bits are folded as they are.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Spread;

impl std::hash::BuildHasher for Spread {
    type Hasher = SpreadHasher;
    fn build_hasher(&self) -> SpreadHasher {
        SpreadHasher(0)
    }
}

#[derive(Debug, Default)]
pub(crate) struct SpreadHasher(u64);

impl std::hash::Hasher for SpreadHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(17) ^ u64::from_le_bytes(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = self.0.rotate_left(17) ^ n;
    }

    fn write_usize(&mut self, _length_prefix: usize) {}
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
        // No configured keys (a store-only setup): nothing can match, so skip the SHA-256 that
        // every store key would otherwise cost here before reaching the key directory.
        if self.keys.is_empty() {
            return None;
        }
        let slot = self.verified.slot(credential);
        if let Some(identity) = self.verified.get(slot, credential) {
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
        let identity = found.map(|label| Identity::unscoped(label.clone()))?;
        self.verified.put(slot, credential, identity.clone());
        Some(identity)
    }
}

/// The credential a client presented: `x-api-key`, else `Authorization: Bearer`.
///
/// # Errors
/// [`AuthFailure::Missing`] when neither header carries a non-empty value.
pub fn credential(headers: &HeaderMap) -> Result<&str, AuthFailure> {
    // A made name: looking up by `&str` parses and checks the name on every request.
    static X_API_KEY: http::HeaderName = http::HeaderName::from_static("x-api-key");
    if let Some(v) = headers.get(&X_API_KEY) {
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
    use proptest::prelude::*;

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
    fn word_comparison_is_exact() {
        for (a, b, eq) in [
            ("", "", true),
            ("abc", "abc", true),
            ("abc", "abd", false),
            ("0123456789abcdefX", "0123456789abcdefX", true),
            ("0123456789abcdefX", "0123456789abcdefY", false),
            ("X123456789abcdef0", "Y123456789abcdef0", false),
        ] {
            assert_eq!(ct_eq_words(a.as_bytes(), b.as_bytes()), eq, "{a} {b}");
        }
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
        assert_eq!((id.key_id, id.team_id, id.user_id), (None, None, None));
    }

    /// Refuses with a fixed reason.
    struct Refuses(Denial);

    impl Authenticator for Refuses {
        fn authenticate(&self, _: &str) -> Option<Identity> {
            None
        }

        fn check(&self, _: &str) -> Result<Identity, Denial> {
            Err(self.0)
        }
    }

    #[test]
    fn any_of_reports_the_most_specific_refusal_and_prefers_a_match() {
        let config: Arc<dyn Authenticator> = Arc::new(keys(&["rk_alpha_0123456789"]));
        let revoked: Arc<dyn Authenticator> = Arc::new(Refuses(Denial::Revoked));
        let both = AnyOf(vec![config.clone(), revoked.clone()]);
        assert_eq!(
            both.check("rk_other_0123456789").unwrap_err(),
            Denial::Revoked
        );
        assert!(both.check("rk_alpha_0123456789").is_ok());
        assert_eq!(
            AnyOf(vec![config]).check("nope").unwrap_err(),
            Denial::Unknown
        );
        assert_eq!(Denial::TeamDisabled.as_str(), "team_disabled");
    }

    #[test]
    fn model_patterns_match_with_stars_only() {
        assert!(glob("claude-*", "claude-haiku-4-5"));
        assert!(glob("claude-*-4-5", "claude-haiku-4-5"));
        assert!(!glob("claude-*-4-5", "claude-haiku-4-6"));
        assert!(glob("*", "anything"));
        assert!(glob("claude-haiku-4-5", "claude-haiku-4-5"));
        assert!(!glob("claude-haiku-4-5", "claude-haiku-4-5-20251001"));
        assert!(!glob("a*a", "a"));
        assert!(glob("a**b", "ab") && glob("a*b*c", "axbyc") && !glob("a*b*c", "acb"));
        assert!(glob("", "") && !glob("", "x") && glob("**", ""));
        let s = Scopes {
            endpoints: vec![Endpoint::Messages],
            models: vec!["claude-haiku-*".into()],
        };
        assert!(s.allows_endpoint(Endpoint::Messages) && !s.allows_endpoint(Endpoint::Batches));
        assert!(s.allows_model("claude-haiku-4-5") && !s.allows_model("claude-opus-5"));
        assert!(Scopes::default().allows_model("x"));
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

    /// The former implementation (collects the parts), kept as the reference.
    fn reference(pattern: &str, text: &str) -> bool {
        let mut parts = pattern.split('*');
        let Some(first) = parts.next() else {
            return false;
        };
        let Some(mut rest) = text.strip_prefix(first) else {
            return false;
        };
        let parts: Vec<&str> = parts.collect();
        let Some((last, middle)) = parts.split_last() else {
            return rest.is_empty();
        };
        for part in middle {
            match rest.find(part) {
                Some(i) => rest = &rest[i + part.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last)
    }

    proptest! {
        #[test]
        fn glob_answers_as_the_reference(pattern in "[ab*]{0,8}", text in "[ab]{0,8}") {
            prop_assert_eq!(glob(&pattern, &text), reference(&pattern, &text));
        }
    }
}
