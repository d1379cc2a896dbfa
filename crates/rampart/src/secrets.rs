//! Operator-supplied keys, from the environment or a file: `RAMPART_JWT_SECRET` and
//! `RAMPART_MASTER_KEY` (or `*_FILE` naming a file with the same content). The format is a key
//! spec ([`rampart_crypto::keyspec`]): weak or malformed keys are refused with a message that names
//! the setting, never the value.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use rampart_crypto::Secret;
use rampart_crypto::envelope::MasterKeys;
use rampart_crypto::jwt::JwtKeys;

/// Env var of the master key spec.
pub const MASTER_KEY_ENV: &str = "RAMPART_MASTER_KEY";
/// Env var of the JWT signing key spec.
pub const JWT_SECRET_ENV: &str = "RAMPART_JWT_SECRET";
/// JWT issuer.
pub const JWT_ISSUER: &str = "rampart";
/// JWT audience of admin access tokens.
pub const JWT_AUDIENCE: &str = "rampart-admin";

/// `VAR`, else the contents of the file named by `VAR_FILE`; `None` when neither is set.
///
/// # Errors
/// When both are set, or the file cannot be read.
pub fn from_env(var: &str) -> anyhow::Result<Option<Secret>> {
    let direct = std::env::var(var).ok().filter(|v| !v.trim().is_empty());
    let file_var = format!("{var}_FILE");
    let file = std::env::var(&file_var)
        .ok()
        .filter(|v| !v.trim().is_empty());
    match (direct, file) {
        (Some(_), Some(_)) => bail!("set only one of {var} and {file_var}"),
        (Some(v), None) => Ok(Some(Secret::new(v.trim().to_owned()))),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(Path::new(&path))
                .with_context(|| format!("{file_var}: cannot read the file it names"))?;
            Ok(Some(Secret::new(text.trim().to_owned())))
        }
        (None, None) => Ok(None),
    }
}

/// The master keys from `RAMPART_MASTER_KEY(_FILE)`.
///
/// # Errors
/// Missing, unreadable, malformed or weak.
pub fn master_keys() -> anyhow::Result<MasterKeys> {
    let spec = from_env(MASTER_KEY_ENV)?.with_context(|| {
        format!(
            "{MASTER_KEY_ENV} (or {MASTER_KEY_ENV}_FILE) is not set: it encrypts upstream credentials at rest; generate one with `rampart keygen`"
        )
    })?;
    MasterKeys::from_spec(&spec, MASTER_KEY_ENV).map_err(anyhow::Error::msg)
}

/// The JWT keys from `RAMPART_JWT_SECRET(_FILE)`, issuing tokens that live `ttl`.
///
/// # Errors
/// Missing, unreadable, malformed or weak.
pub fn jwt_keys(ttl: Duration) -> anyhow::Result<JwtKeys> {
    let spec = from_env(JWT_SECRET_ENV)?.with_context(|| {
        format!(
            "{JWT_SECRET_ENV} (or {JWT_SECRET_ENV}_FILE) is not set: it signs admin sessions; generate one with `rampart keygen`"
        )
    })?;
    JwtKeys::from_spec(&spec, JWT_SECRET_ENV, JWT_ISSUER, JWT_AUDIENCE, ttl)
        .map_err(anyhow::Error::msg)
}
