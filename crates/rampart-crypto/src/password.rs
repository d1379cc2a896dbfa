//! Passwords: a policy checked before hashing, argon2id with OWASP's recommended parameters
//! (m = 19 MiB, t = 2, p = 1), and verification that takes the same time whether or not the
//! account exists ([`verify_or_dummy`]).

use std::collections::HashSet;
use std::sync::OnceLock;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::Secret;

/// Shortest password accepted.
pub const MIN_LEN: usize = 12;
/// Longest password accepted (argon2 is fine with more; this bounds request work).
pub const MAX_LEN: usize = 256;

/// Why a password was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Fewer than [`MIN_LEN`] characters.
    #[error("password must be at least {MIN_LEN} characters")]
    TooShort,
    /// More than [`MAX_LEN`] characters.
    #[error("password must be at most {MAX_LEN} characters")]
    TooLong,
    /// On the list of common passwords (or one with digits or symbols appended).
    #[error("password is too common; choose another")]
    Common,
    /// Contains the account's e-mail address or name.
    #[error("password must not contain the account's e-mail or name")]
    ContainsIdentity,
    /// One short string repeated, e.g. `aaaaaaaaaaaa` or `abcabcabcabc`.
    #[error("password must not be a short string repeated")]
    Repetitive,
}

/// Hashing failed (never includes the password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

fn common() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| {
        include_str!("../data/common-passwords.txt")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect()
    })
}

/// Check `password` against the policy. `identity` holds strings it must not contain (e-mail,
/// the e-mail's local part, the display name); entries shorter than 4 characters are ignored.
///
/// # Errors
/// The first rule the password breaks.
pub fn check_policy(password: &str, identity: &[&str]) -> Result<(), PolicyError> {
    let chars = password.chars().count();
    if chars < MIN_LEN {
        return Err(PolicyError::TooShort);
    }
    if chars > MAX_LEN {
        return Err(PolicyError::TooLong);
    }
    let lower = password.to_lowercase();
    let stem = lower.trim_end_matches(|c: char| !c.is_alphabetic());
    if common().contains(lower.as_str()) || (stem.len() >= 4 && common().contains(stem)) {
        return Err(PolicyError::Common);
    }
    if is_repetition(&lower) {
        return Err(PolicyError::Repetitive);
    }
    for id in identity {
        let id = id.trim().to_lowercase();
        if id.chars().count() >= 4 && lower.contains(&id) {
            return Err(PolicyError::ContainsIdentity);
        }
    }
    Ok(())
}

/// Whether `s` is one shorter string repeated (`aaaa`, `abcabcabc`, `passwordpassword`).
fn is_repetition(s: &str) -> bool {
    let chars: Vec<char> = s.chars().collect();
    let n = chars.len();
    (1..=n / 2)
        .any(|unit| n.is_multiple_of(unit) && chars.chunks(unit).all(|c| c == &chars[..unit]))
}

fn argon2() -> Argon2<'static> {
    // OWASP's first recommendation for argon2id; these parameters are constants, so `new` cannot fail.
    let params = Params::new(19_456, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hash a password into a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`) with a fresh salt.
///
/// # Errors
/// Only on an internal argon2 failure.
pub fn hash(password: &Secret) -> Result<String, HashError> {
    argon2()
        .hash_password(password.expose().as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| HashError(e.to_string()))
}

/// Whether `password` matches the PHC string `phc`. A malformed `phc` never matches.
#[must_use]
pub fn verify(password: &Secret, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|parsed| {
        argon2()
            .verify_password(password.expose().as_bytes(), &parsed)
            .is_ok()
    })
}

/// Verify against `phc` when the account exists, otherwise against a fixed dummy hash, so a
/// login takes the same time whether or not the account exists. Returns false for a missing account.
#[must_use]
pub fn verify_or_dummy(password: &Secret, phc: Option<&str>) -> bool {
    static DUMMY: OnceLock<String> = OnceLock::new();
    match phc {
        Some(phc) => verify(password, phc),
        None => {
            let dummy = DUMMY.get_or_init(|| {
                hash(&Secret::new("rampart-dummy-password-for-timing".to_owned()))
                    .unwrap_or_default()
            });
            let _ = verify(password, dummy);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Secret {
        Secret::new(v.to_owned())
    }

    #[test]
    fn hashes_with_argon2id_owasp_parameters_and_verifies() {
        let h = hash(&s("correct horse battery staple")).unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify(&s("correct horse battery staple"), &h));
        assert!(!verify(&s("correct horse battery stapler"), &h));
        assert!(!verify(&s("x"), "not a phc string"));
    }

    #[test]
    fn the_same_password_hashes_differently_each_time() {
        let p = s("correct horse battery staple");
        assert_ne!(hash(&p).unwrap(), hash(&p).unwrap());
    }

    #[test]
    fn missing_accounts_never_verify() {
        assert!(!verify_or_dummy(
            &s("rampart-dummy-password-for-timing"),
            None
        ));
    }

    #[test]
    fn policy_refuses_short_common_repetitive_and_personal_passwords() {
        assert_eq!(check_policy("short", &[]), Err(PolicyError::TooShort));
        assert_eq!(
            check_policy(&"x".repeat(300), &[]),
            Err(PolicyError::TooLong)
        );
        assert_eq!(
            check_policy("passwordpassword", &[]),
            Err(PolicyError::Repetitive)
        );
        assert_eq!(check_policy("1q2w3e4r5t6y", &[]), Err(PolicyError::Common));
        assert_eq!(check_policy("Baseball123!!", &[]), Err(PolicyError::Common));
        assert_eq!(
            check_policy("aaaaaaaaaaaaaa", &[]),
            Err(PolicyError::Repetitive)
        );
        assert_eq!(
            check_policy(
                "alice.smith-2026-x",
                &["alice.smith@example.com", "alice.smith"]
            ),
            Err(PolicyError::ContainsIdentity)
        );
        assert_eq!(
            check_policy("correct horse battery staple", &["bob@example.com"]),
            Ok(())
        );
    }
}
