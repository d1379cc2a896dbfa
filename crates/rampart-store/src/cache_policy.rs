//! Caching policy per key and per team: whether Rampart's response cache and its prompt-cache
//! breakpoints apply, and how long cached answers live. An unset field inherits (a key's from its
//! team, a team's from the server's configuration). The gateway's key directory reads every
//! policy at once ([`CachePolicyRepository::all_cache_policies`]); writes move the directory
//! version (migration 0009), so every instance applies a change within a fraction of a second.

use async_trait::async_trait;
use serde::Serialize;
use uuid::Uuid;

use crate::error::{Result, StoreError};
use crate::model::NewAuditEvent;

/// The longest lifetime accepted for a cached answer: 30 days.
pub const MAX_CACHE_TTL_SECS: u64 = 30 * 24 * 3600;

/// One key's or team's caching policy; `None` inherits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
pub struct CachePolicy {
    /// The response cache on or off.
    pub response_enabled: Option<bool>,
    /// Lifetime of a cached answer, in seconds (1 to [`MAX_CACHE_TTL_SECS`]).
    pub ttl_secs: Option<u64>,
    /// Prompt-cache breakpoints on or off.
    pub breakpoints_enabled: Option<bool>,
}

impl CachePolicy {
    /// Whether every field inherits.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == CachePolicy::default()
    }

    /// The TTL must be between 1 s and [`MAX_CACHE_TTL_SECS`].
    ///
    /// # Errors
    /// [`StoreError::Invalid`] naming the field.
    pub fn validate(&self) -> Result<()> {
        match self.ttl_secs {
            Some(t) if t == 0 || t > MAX_CACHE_TTL_SECS => Err(StoreError::Invalid(format!(
                "cache_policy.ttl_secs must be between 1 and {MAX_CACHE_TTL_SECS}"
            ))),
            _ => Ok(()),
        }
    }
}

/// Every stored caching policy, for the key directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllCachePolicies {
    /// Keys with a policy of their own.
    pub keys: Vec<(Uuid, CachePolicy)>,
    /// Teams with a policy.
    pub teams: Vec<(Uuid, CachePolicy)>,
}

/// Reading and writing caching policies. Writes take an audit event like every admin write.
#[async_trait]
pub trait CachePolicyRepository: Send + Sync {
    /// A key's own policy (empty when none is set).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when the key does not exist.
    async fn key_cache_policy(&self, key_id: Uuid) -> Result<CachePolicy>;
    /// Replace a key's own policy (an empty one removes it).
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::Invalid`] for a bad value.
    async fn set_key_cache_policy(
        &self,
        key_id: Uuid,
        policy: &CachePolicy,
        audit: Option<&NewAuditEvent>,
    ) -> Result<CachePolicy>;
    /// A team's policy (empty when none is set).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when the team does not exist.
    async fn team_cache_policy(&self, team_id: Uuid) -> Result<CachePolicy>;
    /// Replace a team's policy (an empty one removes it).
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::Invalid`] for a bad value.
    async fn set_team_cache_policy(
        &self,
        team_id: Uuid,
        policy: &CachePolicy,
        audit: Option<&NewAuditEvent>,
    ) -> Result<CachePolicy>;
    /// Every key's and team's policy.
    async fn all_cache_policies(&self) -> Result<AllCachePolicies>;
}
