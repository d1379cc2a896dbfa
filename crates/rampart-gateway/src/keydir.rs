//! Virtual API keys from the store, served from memory: the whole key table is loaded into a map
//! keyed by the keys' peppered digests and reloaded every second, so the proxy never waits on the
//! database and a disabled, revoked or expired key (or one of a disabled team) stops working on
//! every instance within about a second. (A full reload suits thousands of keys; beyond that it
//! becomes an incremental refresh.)

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rampart_crypto::apikey::{self, KeyHasher};
use rampart_store::Store;
use time::OffsetDateTime;

use crate::auth::{Authenticator, Endpoint, Identity, Scopes};

#[derive(Debug)]
struct Entry {
    identity: Identity,
    expires_at: Option<OffsetDateTime>,
}

/// The in-memory directory of usable store keys.
#[derive(Debug)]
pub struct KeyDirectory {
    hasher: KeyHasher,
    entries: RwLock<Arc<HashMap<[u8; 32], Entry>>>,
}

impl KeyDirectory {
    /// An empty directory that digests presented keys with `hasher`.
    #[must_use]
    pub fn new(hasher: KeyHasher) -> Self {
        Self {
            hasher,
            entries: RwLock::new(Arc::new(HashMap::new())),
        }
    }

    /// Reload every usable key from the store; returns how many are usable.
    ///
    /// # Errors
    /// A store failure (the previous directory stays in force).
    pub async fn refresh(&self, store: &Store) -> rampart_store::Result<usize> {
        let disabled_teams: Vec<_> = store
            .list_teams()
            .await?
            .into_iter()
            .filter(|t| t.disabled)
            .map(|t| t.id)
            .collect();
        let keys = store
            .list_api_keys(rampart_store::ApiKeyFilter::default())
            .await?;
        let mut map = HashMap::with_capacity(keys.len());
        for k in keys {
            if !k.enabled || k.revoked_at.is_some() || disabled_teams.contains(&k.team_id) {
                continue;
            }
            let Ok(digest) = <[u8; 32]>::try_from(k.key_hash.as_slice()) else {
                continue;
            };
            let scopes = Scopes {
                endpoints: k
                    .allowed_endpoints
                    .iter()
                    .filter_map(|e| Endpoint::parse(e))
                    .collect(),
                models: k.allowed_models.clone(),
            };
            map.insert(
                digest,
                Entry {
                    identity: Identity {
                        key_label: Arc::from(k.prefix.as_str()),
                        scopes: Some(Arc::new(scopes)),
                    },
                    expires_at: k.expires_at,
                },
            );
        }
        let n = map.len();
        if let Ok(mut entries) = self.entries.write() {
            *entries = Arc::new(map);
        }
        Ok(n)
    }

    /// Reload every `every` until the task is aborted; failures are logged and retried.
    pub fn spawn_refresher(
        self: Arc<Self>,
        store: Store,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut failing = false;
            loop {
                tick.tick().await;
                match self.refresh(&store).await {
                    Ok(_) if failing => {
                        failing = false;
                        tracing::info!("key directory refresh recovered");
                    }
                    Ok(_) => {}
                    Err(e) if !failing => {
                        failing = true;
                        tracing::error!(error = %e, "key directory refresh failed; serving the last loaded keys");
                    }
                    Err(_) => {}
                }
            }
        })
    }
}

impl Authenticator for KeyDirectory {
    fn authenticate(&self, credential: &str) -> Option<Identity> {
        apikey::check_format(credential).ok()?;
        let digest = self.hasher.digest(credential);
        let entries = self.entries.read().ok()?.clone();
        let entry = entries.get(&digest.0)?;
        if entry
            .expires_at
            .is_some_and(|t| t <= OffsetDateTime::now_utc())
        {
            return None;
        }
        Some(entry.identity.clone())
    }
}
