//! Webhook signing secrets and signatures.
//!
//! A secret is `whsec_` followed by 43 characters of URL-safe base64 (256 random bits). A
//! delivery is signed with HMAC-SHA256, keyed by the whole secret string as UTF-8, over
//! `"{timestamp}.{body}"` (the `rampart-webhook-timestamp` header, a dot, the raw body bytes),
//! and sent as `rampart-webhook-signature: v1=<lowercase hex>`. Receivers recompute it, compare
//! in constant time and refuse timestamps too far from their clock (replays).

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::Secret;

/// The prefix of every webhook signing secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// The signature scheme's version tag.
pub const SCHEME: &str = "v1";

/// A fresh signing secret: `whsec_` + 256 random bits, URL-safe base64 without padding.
#[must_use]
pub fn generate_secret() -> Secret {
    let body = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crate::random_bytes::<32>());
    Secret::new(format!("{SECRET_PREFIX}{body}"))
}

fn mac(secret: &Secret, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.expose().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `rampart-webhook-signature` value of `body` sent at `timestamp` (Unix seconds, as in the
/// `rampart-webhook-timestamp` header): `v1=<hex HMAC-SHA256 over "{timestamp}.{body}">`.
#[must_use]
pub fn sign(secret: &Secret, timestamp: i64, body: &[u8]) -> String {
    let digest = mac(secret, &timestamp.to_string(), body)
        .finalize()
        .into_bytes();
    format!("{SCHEME}={}", hex::encode(digest))
}

/// Why a delivery did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The timestamp header is not an integer.
    #[error("the timestamp is not a number of seconds")]
    BadTimestamp,
    /// The timestamp is further from now than the tolerance.
    #[error("the timestamp is outside the tolerance")]
    Stale,
    /// No `v1=` signature matched.
    #[error("no signature matches")]
    Mismatch,
}

/// Checks a delivery as a receiver would: the timestamp within `tolerance_secs` of `now`, and
/// one of the space-separated `v1=` signatures in `signature_header` equal to ours.
///
/// # Errors
/// [`VerifyError`] saying which check failed.
pub fn verify(
    secret: &Secret,
    timestamp: &str,
    body: &[u8],
    signature_header: &str,
    now: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    if (now - ts).abs() > tolerance_secs {
        return Err(VerifyError::Stale);
    }
    let expected = sign(secret, ts, body);
    let matched = signature_header
        .split_ascii_whitespace()
        .any(|candidate| bool::from(candidate.as_bytes().ct_eq(expected.as_bytes())));
    if matched {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_prefixed_random_and_long() {
        let a = generate_secret();
        let b = generate_secret();
        assert!(a.expose().starts_with("whsec_"));
        assert_eq!(a.expose().len(), 6 + 43);
        assert_ne!(a.expose(), b.expose());
    }

    #[test]
    fn signature_is_hmac_sha256_over_timestamp_dot_body() {
        // Known answer, computed independently:
        // python3 -c 'import hmac,hashlib; print(hmac.new(b"whsec_test", b"1700000000.{\"a\":1}", hashlib.sha256).hexdigest())'
        let secret = Secret::new("whsec_test".to_owned());
        assert_eq!(
            sign(&secret, 1_700_000_000, br#"{"a":1}"#),
            "v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
    }

    #[test]
    fn verifies_its_own_signature_and_refuses_changes() {
        let secret = generate_secret();
        let body = br#"{"type":"message_batch.ended"}"#;
        let sig = sign(&secret, 1000, body);
        assert_eq!(verify(&secret, "1000", body, &sig, 1100, 300), Ok(()));
        let both = format!("v1=deadbeef {sig}");
        assert_eq!(verify(&secret, "1000", body, &both, 1000, 300), Ok(()));
        assert_eq!(
            verify(&secret, "1000", b"{}", &sig, 1000, 300),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(&secret, "1001", body, &sig, 1000, 300),
            Err(VerifyError::Mismatch)
        );
        let other = generate_secret();
        assert_eq!(
            verify(&other, "1000", body, &sig, 1000, 300),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(&secret, "1000", body, &sig, 1301, 300),
            Err(VerifyError::Stale)
        );
        assert_eq!(
            verify(&secret, "soon", body, &sig, 1000, 300),
            Err(VerifyError::BadTimestamp)
        );
    }
}
