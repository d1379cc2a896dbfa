//! Secrets kept in the data directory (demo keys, the demo admin password, the key pepper):
//! random, prefixed, written once with mode 0600 and read back on later runs.

use std::path::Path;

use anyhow::Context;
use base64::Engine;

/// A 256-bit random key with a visible prefix, base64url without padding.
fn fresh_key(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Read the key stored at `path`, or create it with mode 0600.
pub fn stored_key(path: &Path, prefix: &str) -> anyhow::Result<String> {
    if let Ok(existing) = std::fs::read_to_string(path) {
        let k = existing.trim();
        if k.starts_with(prefix) && k.len() >= 40 {
            return Ok(k.to_owned());
        }
    }
    let key = fresh_key(prefix);
    write_private(path, &key).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(key)
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())?;
    f.write_all(b"\n")
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, format!("{contents}\n"))
}
