//! Opaque random tokens (refresh tokens, one-time setup tokens): 256 bits, base64url, stored only
//! as SHA-256 digests (they have full entropy, so no pepper or slow hash is needed), compared in
//! constant time.

use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::Secret;

/// A new token and the digest to store.
#[derive(Debug)]
pub struct NewToken {
    /// Give this to the client once.
    pub token: Secret,
    /// Store this.
    pub digest: [u8; 32],
}

/// Generate a token with a visible `prefix` (e.g. `rrt_` for refresh tokens).
#[must_use]
pub fn generate(prefix: &str) -> NewToken {
    let token = format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crate::random_bytes::<32>())
    );
    let digest = digest(&token);
    NewToken {
        token: Secret::new(token),
        digest,
    }
}

/// SHA-256 of a presented token.
#[must_use]
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Constant-time comparison of a presented token with a stored digest.
#[must_use]
pub fn matches(token: &str, stored: &[u8; 32]) -> bool {
    digest(token).ct_eq(stored).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_match_only_their_digest() {
        let a = generate("rrt_");
        let b = generate("rrt_");
        assert!(a.token.expose().starts_with("rrt_"));
        assert_ne!(a.token.expose(), b.token.expose());
        assert!(matches(a.token.expose(), &a.digest));
        assert!(!matches(b.token.expose(), &a.digest));
    }
}
