//! Envelope encryption at rest for upstream credentials: AES-256-GCM, a random 96-bit nonce per
//! record, the key id stored beside the ciphertext, and the record's identity bound as associated
//! data so a ciphertext cannot be moved to another row. Several master keys can be loaded at once
//! (the current one encrypts, all decrypt), which is what master-key rotation needs.

use std::collections::BTreeMap;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;

use crate::Secret;

/// An encrypted value and what is needed to open it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Which master key sealed it.
    pub key_id: String,
    /// The 96-bit nonce.
    pub nonce: [u8; 12],
    /// Ciphertext with the GCM tag appended.
    pub ciphertext: Vec<u8>,
}

/// Why a value could not be sealed or opened. Never carries key material or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// A master key is not 32 bytes of base64 or hex.
    #[error("master key `{0}` must be 32 bytes, as 64 hex characters or base64")]
    BadKey(String),
    /// The key id of a sealed value is not loaded.
    #[error("master key `{0}` is not loaded")]
    UnknownKey(String),
    /// Tampered ciphertext, wrong associated data or wrong key.
    #[error("decryption failed: the value was altered, moved, or sealed with another key")]
    Open,
    /// Encryption failed.
    #[error("encryption failed")]
    Seal,
}

/// The loaded master keys.
pub struct MasterKeys {
    current: String,
    keys: BTreeMap<String, Aes256Gcm>,
}

impl std::fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKeys")
            .field("current", &self.current)
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn decode_key(id: &str, material: &Secret) -> Result<Aes256Gcm, EnvelopeError> {
    let text = material.expose().trim();
    let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(text).ok()
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
            .ok()
    };
    match bytes {
        Some(b) if b.len() == 32 => {
            Aes256Gcm::new_from_slice(&b).map_err(|_| EnvelopeError::BadKey(id.to_owned()))
        }
        _ => Err(EnvelopeError::BadKey(id.to_owned())),
    }
}

impl MasterKeys {
    /// Load keys as `(id, material)`; the first is the current (encrypting) key.
    ///
    /// # Errors
    /// [`EnvelopeError::BadKey`] for material that is not 32 bytes; an empty list is `BadKey("")`.
    pub fn new(keys: &[(String, Secret)]) -> Result<Self, EnvelopeError> {
        let Some((current, _)) = keys.first() else {
            return Err(EnvelopeError::BadKey(String::new()));
        };
        let mut map = BTreeMap::new();
        for (id, material) in keys {
            map.insert(id.clone(), decode_key(id, material)?);
        }
        Ok(Self {
            current: current.clone(),
            keys: map,
        })
    }

    /// Load keys from a key spec (see [`crate::keyspec`]): `RAMPART_MASTER_KEY`'s format. Master
    /// keys must be exactly 32 bytes (AES-256).
    ///
    /// # Errors
    /// A message naming `what` and the bad entry, never its value.
    pub fn from_spec(spec: &Secret, what: &str) -> Result<Self, String> {
        let entries = crate::keyspec::parse(spec, what)?;
        let mut map = BTreeMap::new();
        for e in &entries {
            if e.bytes.len() != 32 {
                return Err(format!(
                    "{what}: key {} must be exactly 32 bytes, found {}",
                    e.id,
                    e.bytes.len()
                ));
            }
            let cipher = Aes256Gcm::new_from_slice(&e.bytes)
                .map_err(|_| format!("{what}: key {} is unusable", e.id))?;
            map.insert(e.id.clone(), cipher);
        }
        Ok(Self {
            current: entries[0].id.clone(),
            keys: map,
        })
    }

    /// Ids of every loaded key, current first.
    #[must_use]
    pub fn ids(&self) -> Vec<&str> {
        let mut ids = vec![self.current.as_str()];
        ids.extend(
            self.keys
                .keys()
                .map(String::as_str)
                .filter(|k| *k != self.current),
        );
        ids
    }

    /// A fresh random key, base64-encoded (for `rampart` to print when generating one).
    #[must_use]
    pub fn generate_material() -> Secret {
        Secret::new(base64::engine::general_purpose::STANDARD.encode(crate::random_bytes::<32>()))
    }

    /// Id of the key new values are sealed with.
    #[must_use]
    pub fn current_id(&self) -> &str {
        &self.current
    }

    /// Encrypt `plaintext`, binding `aad` (e.g. `upstream_credential:<row id>`).
    ///
    /// # Errors
    /// [`EnvelopeError::Seal`] (not expected in practice).
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Sealed, EnvelopeError> {
        let cipher = self
            .keys
            .get(&self.current)
            .ok_or_else(|| EnvelopeError::UnknownKey(self.current.clone()))?;
        let nonce: [u8; 12] = crate::random_bytes();
        let ciphertext = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| EnvelopeError::Seal)?;
        Ok(Sealed {
            key_id: self.current.clone(),
            nonce,
            ciphertext,
        })
    }

    /// Decrypt a sealed value with the same `aad` it was sealed with.
    ///
    /// # Errors
    /// [`EnvelopeError::UnknownKey`] or [`EnvelopeError::Open`].
    pub fn open(&self, sealed: &Sealed, aad: &[u8]) -> Result<Secret, EnvelopeError> {
        let cipher = self
            .keys
            .get(&sealed.key_id)
            .ok_or_else(|| EnvelopeError::UnknownKey(sealed.key_id.clone()))?;
        let plain = cipher
            .decrypt(
                &Nonce::from(sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad,
                },
            )
            .map_err(|_| EnvelopeError::Open)?;
        String::from_utf8(plain)
            .map(Secret::new)
            .map_err(|_| EnvelopeError::Open)
    }

    /// Re-seal with the current key (master-key rotation); a value already under it is returned as is.
    ///
    /// # Errors
    /// As [`MasterKeys::open`] and [`MasterKeys::seal`].
    pub fn reseal(&self, sealed: &Sealed, aad: &[u8]) -> Result<Sealed, EnvelopeError> {
        if sealed.key_id == self.current {
            return Ok(sealed.clone());
        }
        let plain = self.open(sealed, aad)?;
        self.seal(plain.expose().as_bytes(), aad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(ids: &[&str]) -> MasterKeys {
        let list: Vec<(String, Secret)> = ids
            .iter()
            .map(|id| {
                (
                    (*id).to_owned(),
                    Secret::new(hex::encode([id.len() as u8 + id.as_bytes()[0]; 32])),
                )
            })
            .collect();
        MasterKeys::new(&list).unwrap()
    }

    #[test]
    fn round_trips_and_binds_the_associated_data() {
        let k = keys(&["k1"]);
        let s = k
            .seal(b"sk-ant-upstream", b"upstream_credential:1")
            .unwrap();
        assert_eq!(s.key_id, "k1");
        assert_eq!(
            k.open(&s, b"upstream_credential:1").unwrap().expose(),
            "sk-ant-upstream"
        );
        assert_eq!(
            k.open(&s, b"upstream_credential:2").unwrap_err(),
            EnvelopeError::Open
        );
        let mut tampered = s.clone();
        tampered.ciphertext[0] ^= 1;
        assert_eq!(
            k.open(&tampered, b"upstream_credential:1").unwrap_err(),
            EnvelopeError::Open
        );
    }

    #[test]
    fn nonces_are_fresh_per_seal() {
        let k = keys(&["k1"]);
        assert_ne!(
            k.seal(b"x", b"").unwrap().nonce,
            k.seal(b"x", b"").unwrap().nonce
        );
    }

    #[test]
    fn rotation_reseals_old_values_under_the_current_key() {
        let old = keys(&["k1"]);
        let sealed = old.seal(b"secret", b"row").unwrap();
        let both = keys(&["k2", "k1"]);
        let resealed = both.reseal(&sealed, b"row").unwrap();
        assert_eq!(resealed.key_id, "k2");
        assert_eq!(both.open(&resealed, b"row").unwrap().expose(), "secret");
        assert_eq!(
            keys(&["k2"]).open(&sealed, b"row").unwrap_err(),
            EnvelopeError::UnknownKey("k1".into())
        );
    }

    #[test]
    fn bad_key_material_is_refused_and_never_printed() {
        let err = MasterKeys::new(&[("k1".into(), Secret::new("tooshort".into()))]).unwrap_err();
        assert_eq!(err, EnvelopeError::BadKey("k1".into()));
        assert!(!format!("{err} {:?}", keys(&["k1"])).contains("tooshort"));
        assert!(MasterKeys::new(&[("g".into(), MasterKeys::generate_material())]).is_ok());
    }
}
