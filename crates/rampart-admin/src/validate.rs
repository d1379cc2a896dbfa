//! Input rules, checked at the edge and shared by the admin API and the CLI. Each function parses
//! raw input into the value the store gets, or says precisely what is wrong (never echoing a
//! secret).

use rampart_crypto::{Secret, password};
use time::OffsetDateTime;

/// Longest accepted e-mail address (RFC 5321).
pub const MAX_EMAIL: usize = 254;
/// Longest name (team, key, upstream), in characters.
pub const MAX_NAME: usize = 100;
/// Longest model pattern.
pub const MAX_MODEL_PATTERN: usize = 200;
/// Most model patterns on one key.
pub const MAX_MODEL_PATTERNS: usize = 64;
/// The endpoints a key can be scoped to.
pub const ENDPOINTS: [&str; 4] = ["messages", "count_tokens", "batches", "models"];

fn has_controls(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// A plausible e-mail address, trimmed and lower-cased: one `@`, a dotted domain, no spaces or
/// control characters, at most 254 bytes.
///
/// # Errors
/// A message saying what is wrong.
pub fn email(raw: &str) -> Result<String, String> {
    let e = raw.trim();
    if e.len() > MAX_EMAIL {
        return Err(format!("email is longer than {MAX_EMAIL} bytes"));
    }
    let ok = e.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains('@')
    }) && e.chars().all(|c| !c.is_whitespace() && !c.is_control());
    if ok {
        Ok(e.to_ascii_lowercase())
    } else {
        Err("email is not a valid address".to_owned())
    }
}

/// A display name: trimmed, 1–100 characters, no control characters.
///
/// # Errors
/// A message naming `field`.
pub fn name(field: &str, raw: &str) -> Result<String, String> {
    let n = raw.trim();
    if n.is_empty() {
        return Err(format!("{field} must not be empty"));
    }
    if n.chars().count() > MAX_NAME {
        return Err(format!("{field} is longer than {MAX_NAME} characters"));
    }
    if has_controls(n) {
        return Err(format!("{field} must not contain control characters"));
    }
    Ok(n.to_owned())
}

/// A new password for `email`: the policy (length, common list, repetition, resemblance to the
/// address), then argon2id.
///
/// # Errors
/// The policy's reason, or a hashing failure.
pub fn new_password(pw: &Secret, email: &str) -> Result<String, String> {
    let local = email.split('@').next().unwrap_or_default();
    password::check_policy(pw.expose(), &[email, local]).map_err(|e| e.to_string())?;
    password::hash(pw).map_err(|_| "password could not be hashed".to_owned())
}

/// How a message names a list and its items: the admin API by the body's field
/// (`allowed_models[2]`), the CLI by its repeatable flag (`--model`, `--model #3` among several).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListName<'a> {
    /// A JSON array field.
    Field(&'a str),
    /// A flag given once per item.
    Flag(&'a str),
}

impl ListName<'_> {
    /// Item `i` of `len`.
    fn item(self, i: usize, len: usize) -> String {
        match self {
            ListName::Field(f) => format!("{f}[{i}]"),
            ListName::Flag(f) if len == 1 => f.to_owned(),
            ListName::Flag(f) => format!("{f} #{}", i + 1),
        }
    }
}

/// Model patterns: each 1–200 characters of `[A-Za-z0-9._:@/-]` or `*`, at most 64, de-duplicated.
///
/// # Errors
/// A message naming the list (`allowed_models`, `--model`) and the first bad pattern's position.
pub fn model_patterns(list: ListName<'_>, raw: &[String]) -> Result<Vec<String>, String> {
    if raw.len() > MAX_MODEL_PATTERNS {
        let (ListName::Field(name) | ListName::Flag(name)) = list;
        return Err(format!("at most {MAX_MODEL_PATTERNS} {name} patterns"));
    }
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for (i, p) in raw.iter().enumerate() {
        let p = p.trim();
        let ok = !p.is_empty()
            && p.len() <= MAX_MODEL_PATTERN
            && p.bytes().all(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(b, b'.' | b'_' | b':' | b'@' | b'/' | b'-' | b'*')
            });
        if !ok {
            return Err(format!(
                "{} must be 1-{MAX_MODEL_PATTERN} characters of letters, digits, . _ : @ / - and *",
                list.item(i, raw.len())
            ));
        }
        if !out.iter().any(|o| o == p) {
            out.push(p.to_owned());
        }
    }
    Ok(out)
}

/// Endpoint names from [`ENDPOINTS`], de-duplicated.
///
/// # Errors
/// A message naming the list (`allowed_endpoints`, `--endpoint`) and the first unknown one's
/// position.
pub fn endpoints(list: ListName<'_>, raw: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for (i, e) in raw.iter().enumerate() {
        if !ENDPOINTS.contains(&e.as_str()) {
            return Err(format!(
                "{} must be one of {}",
                list.item(i, raw.len()),
                ENDPOINTS.join(", ")
            ));
        }
        if !out.contains(e) {
            out.push(e.clone());
        }
    }
    Ok(out)
}

/// An expiry: in the future (and within the representable range).
///
/// # Errors
/// When it is not after `now`.
pub fn expiry(at: OffsetDateTime, now: OffsetDateTime) -> Result<OffsetDateTime, String> {
    if at <= now {
        return Err("expires_at must be in the future".to_owned());
    }
    Ok(at)
}

/// An upstream (Anthropic) API key as given by an admin: 20–512 printable ASCII characters.
///
/// # Errors
/// What is wrong, never the value.
pub fn upstream_key(key: &Secret) -> Result<(), String> {
    let k = key.expose();
    if k.len() < 20 || k.len() > 512 || !k.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("api_key must be 20-512 printable ASCII characters without spaces".to_owned());
    }
    Ok(())
}

/// A hint that identifies an upstream key without revealing it: its first 7 and last 4
/// characters when it is long enough, e.g. `sk-ant-…wxyz`.
#[must_use]
pub fn key_hint(key: &Secret) -> String {
    let k = key.expose();
    if k.len() >= 24 && k.is_ascii() {
        format!("{}…{}", &k[..7], &k[k.len() - 4..])
    } else {
        "…".to_owned()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(email("  Ada@Example.COM ").unwrap(), "ada@example.com");
        for bad in [
            "",
            "ada",
            "ada@",
            "@x.io",
            "ada@x",
            "a da@x.io",
            "ada@x.io\u{0}",
            "' OR 1=1 --",
            &format!("{}@x.io", "a".repeat(300)),
        ] {
            assert!(email(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_and_patterns_and_endpoints() {
        assert_eq!(name("name", " ops ").unwrap(), "ops");
        assert!(name("name", "").is_err());
        assert!(name("name", "a\nb").is_err());
        assert!(name("name", &"x".repeat(101)).is_err());
        let models = ListName::Field("allowed_models");
        assert_eq!(
            model_patterns(models, &["claude-haiku-*".into(), "claude-haiku-*".into()]).unwrap(),
            ["claude-haiku-*"]
        );
        assert!(model_patterns(models, &["'; DROP TABLE api_keys; --".into()]).is_err());
        let two = ["messages".into(), "admin".into()];
        let err = endpoints(ListName::Field("allowed_endpoints"), &two).unwrap_err();
        assert!(
            err.starts_with("allowed_endpoints[1] must be one of"),
            "{err}"
        );
        let err = endpoints(ListName::Flag("--endpoint"), &two).unwrap_err();
        assert!(err.starts_with("--endpoint #2 must be one of"), "{err}");
        let err = model_patterns(ListName::Flag("--model"), &["a\u{1}".into()]).unwrap_err();
        assert!(err.starts_with("--model must be 1-200 characters"), "{err}");
    }

    #[test]
    fn hints_never_show_the_middle_of_a_key() {
        let k = Secret::new("sk-ant-api03-abcdefghijklmnopqrstuvwxyz".into());
        assert_eq!(key_hint(&k), "sk-ant-…wxyz");
        assert_eq!(key_hint(&Secret::new("short".into())), "…");
    }
}
