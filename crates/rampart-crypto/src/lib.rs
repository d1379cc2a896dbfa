//! Secrets and cryptography for Rampart, in one crate that changes rarely:
//!
//! - [`Secret`]: a string that never prints, never serialises and is zeroed on drop;
//! - [`password`]: argon2id hashing with OWASP parameters and a password policy;
//! - [`apikey`]: virtual API keys (`rk_…`, 256 bits) and their keyed digests;
//! - [`envelope`]: AES-256-GCM encryption at rest with key ids, for upstream credentials;
//! - [`jwt`]: short-lived HS256 access tokens with `kid` rotation and every claim checked;
//! - [`keyspec`]: the one format for operator-supplied keys (master key, JWT secret), with a
//!   strength check;
//! - [`token`]: opaque random tokens (refresh tokens, setup tokens) stored as digests;
//! - [`webhook`]: webhook signing secrets (`whsec_…`) and HMAC-SHA256 signatures.

pub mod apikey;
pub mod envelope;
pub mod jwt;
pub mod keyspec;
pub mod password;
mod secret;
pub mod token;
pub mod webhook;

pub use secret::Secret;

/// `n` random bytes from the operating system's generator.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::fill(&mut b);
    b
}
