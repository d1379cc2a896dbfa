//! Admin-plane access tokens: HS256 JWTs, short-lived, signed with the current key and verified
//! with any loaded key by `kid` (so signing keys rotate without logging everyone out). Only HS256
//! is accepted (an explicit allow-list: no `none`, no algorithm confusion), and `iss`, `aud`,
//! `exp`, `nbf`, `iat`, `sub` and `jti` are all required and checked.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::Secret;

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Subject: the user id.
    pub sub: String,
    /// Expiry (seconds since the epoch).
    pub exp: u64,
    /// Not before.
    pub nbf: u64,
    /// Issued at.
    pub iat: u64,
    /// Unique id, for revocation.
    pub jti: String,
    /// The user's role.
    pub role: String,
    /// The user's team, when they have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// Issue time in milliseconds (finer than `iat`, so a session can be compared with a
    /// password change in the same second).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat_ms: Option<u64>,
}

/// Why a token was refused. The messages are safe to show a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Expired.
    #[error("token expired")]
    Expired,
    /// Signed with a key that is not loaded.
    #[error("token signed with an unknown key")]
    UnknownKey,
    /// Anything else: bad signature, wrong algorithm, issuer or audience, missing claims, malformed.
    #[error("invalid token")]
    Invalid,
    /// Signing failed.
    #[error("token could not be issued")]
    Issue,
}

/// Issues and verifies access tokens.
pub struct JwtKeys {
    current: String,
    keys: BTreeMap<String, (EncodingKey, DecodingKey)>,
    issuer: String,
    audience: String,
    ttl: Duration,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field("current", &self.current)
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl JwtKeys {
    /// Keys as `(kid, secret)`, the first signs; each secret must be at least 32 bytes.
    ///
    /// # Errors
    /// A message naming the first unusable key (never its value).
    pub fn new(
        keys: &[(String, Secret)],
        issuer: &str,
        audience: &str,
        ttl: Duration,
    ) -> Result<Self, String> {
        let Some((current, _)) = keys.first() else {
            return Err("at least one JWT signing key is required".to_owned());
        };
        let mut map = BTreeMap::new();
        for (kid, secret) in keys {
            if secret.expose().len() < 32 {
                return Err(format!("JWT signing key `{kid}` must be at least 32 bytes"));
            }
            let bytes = secret.expose().as_bytes();
            map.insert(
                kid.clone(),
                (
                    EncodingKey::from_secret(bytes),
                    DecodingKey::from_secret(bytes),
                ),
            );
        }
        Ok(Self {
            current: current.clone(),
            keys: map,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            ttl,
        })
    }

    /// Keys from a key spec (see [`crate::keyspec`]): `RAMPART_JWT_SECRET`'s format, each key
    /// 32+ random bytes; the first signs.
    ///
    /// # Errors
    /// A message naming `what` and the bad entry, never its value.
    pub fn from_spec(
        spec: &Secret,
        what: &str,
        issuer: &str,
        audience: &str,
        ttl: Duration,
    ) -> Result<Self, String> {
        let entries = crate::keyspec::parse(spec, what)?;
        let mut map = BTreeMap::new();
        for e in &entries {
            map.insert(
                e.id.clone(),
                (
                    EncodingKey::from_secret(&e.bytes),
                    DecodingKey::from_secret(&e.bytes),
                ),
            );
        }
        Ok(Self {
            current: entries[0].id.clone(),
            keys: map,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            ttl,
        })
    }

    /// Ids of every loaded key, the signing one first.
    #[must_use]
    pub fn kids(&self) -> Vec<&str> {
        let mut ids = vec![self.current.as_str()];
        ids.extend(
            self.keys
                .keys()
                .map(String::as_str)
                .filter(|k| *k != self.current),
        );
        ids
    }

    /// How long issued tokens live.
    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Issue a token for `sub` with `role` and `team`, valid from now for the configured TTL.
    ///
    /// # Errors
    /// [`JwtError::Issue`].
    pub fn issue(
        &self,
        sub: &str,
        role: &str,
        team: Option<&str>,
    ) -> Result<(String, Claims), JwtError> {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| JwtError::Issue)?;
        let now = since_epoch.as_secs();
        let now_ms = u64::try_from(since_epoch.as_millis()).map_err(|_| JwtError::Issue)?;
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: sub.to_owned(),
            exp: now + self.ttl.as_secs(),
            nbf: now,
            iat: now,
            jti: base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(crate::random_bytes::<16>()),
            role: role.to_owned(),
            team: team.map(str::to_owned),
            iat_ms: Some(now_ms),
        };
        let (enc, _) = self.keys.get(&self.current).ok_or(JwtError::Issue)?;
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.current.clone());
        let token = jsonwebtoken::encode(&header, &claims, enc).map_err(|_| JwtError::Issue)?;
        Ok((token, claims))
    }

    /// Verify signature (HS256 only, key by `kid`), issuer, audience, and the time claims.
    ///
    /// # Errors
    /// [`JwtError::Expired`], [`JwtError::UnknownKey`] or [`JwtError::Invalid`].
    pub fn verify(&self, token: &str) -> Result<Claims, JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Invalid)?;
        if header.alg != Algorithm::HS256 {
            return Err(JwtError::Invalid);
        }
        let kid = header.kid.ok_or(JwtError::Invalid)?;
        let (_, dec) = self.keys.get(&kid).ok_or(JwtError::UnknownKey)?;
        let mut v = Validation::new(Algorithm::HS256);
        v.algorithms = vec![Algorithm::HS256];
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub", "jti"]);
        v.validate_exp = true;
        v.validate_nbf = true;
        v.leeway = 5;
        jsonwebtoken::decode::<Claims>(token, dec, &v)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => JwtError::Expired,
                _ => JwtError::Invalid,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[(&str, char)], ttl: u64) -> JwtKeys {
        let list: Vec<(String, Secret)> = list
            .iter()
            .map(|(kid, c)| ((*kid).to_owned(), Secret::new(c.to_string().repeat(32))))
            .collect();
        JwtKeys::new(&list, "rampart", "rampart-admin", Duration::from_secs(ttl)).unwrap()
    }

    #[test]
    fn issued_tokens_verify_with_every_claim() {
        let k = keys(&[("k1", 'a')], 900);
        let (token, claims) = k.issue("user-1", "admin", Some("team-1")).unwrap();
        let got = k.verify(&token).unwrap();
        assert_eq!(got, claims);
        assert_eq!(got.exp - got.iat, 900);
        assert_eq!(got.jti.len(), 22);
    }

    #[test]
    fn rotated_keys_still_verify_old_tokens_until_removed() {
        let (old_token, _) = keys(&[("k1", 'a')], 900)
            .issue("u", "viewer", None)
            .unwrap();
        assert!(
            keys(&[("k2", 'b'), ("k1", 'a')], 900)
                .verify(&old_token)
                .is_ok()
        );
        assert_eq!(
            keys(&[("k2", 'b')], 900).verify(&old_token),
            Err(JwtError::UnknownKey)
        );
    }

    #[test]
    fn wrong_issuer_audience_signature_or_algorithm_is_invalid() {
        let k = keys(&[("k1", 'a')], 900);
        let (token, _) = k.issue("u", "admin", None).unwrap();
        let other_aud = JwtKeys::new(
            &[("k1".into(), Secret::new("a".repeat(32)))],
            "rampart",
            "elsewhere",
            Duration::from_secs(900),
        )
        .unwrap();
        assert_eq!(other_aud.verify(&token), Err(JwtError::Invalid));
        let forged = keys(&[("k1", 'z')], 900);
        assert_eq!(forged.verify(&token), Err(JwtError::Invalid));
        let mut parts: Vec<&str> = token.split('.').collect();
        let none_header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"alg":"none","kid":"k1"}"#);
        parts[0] = &none_header;
        assert_eq!(k.verify(&parts.join(".")), Err(JwtError::Invalid));
        assert_eq!(k.verify("not.a.token"), Err(JwtError::Invalid));
    }

    #[test]
    fn expired_tokens_are_refused() {
        let k = keys(&[("k1", 'a')], 0);
        let (token, mut claims) = k.issue("u", "admin", None).unwrap();
        claims.exp = claims.iat.saturating_sub(60);
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let stale = jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_secret("a".repeat(32).as_bytes()),
        )
        .unwrap();
        assert_eq!(k.verify(&stale), Err(JwtError::Expired));
        drop(token);
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(
            JwtKeys::new(
                &[("k".into(), Secret::new("short".into()))],
                "i",
                "a",
                Duration::from_secs(1)
            )
            .is_err()
        );
    }
}
