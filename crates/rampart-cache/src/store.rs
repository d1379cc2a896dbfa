//! Where cached answers live. [`ResponseStore`] is the interface; [`MemoryStore`] is the
//! in-process store (moka: TinyLFU admission, bounded by bytes, a TTL per entry).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;

use crate::CacheKey;

/// A cached answer: the final message as JSON, and what is needed to account for a hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedResponse {
    /// The final message (`{"type":"message",...}`), as stored.
    pub message: Bytes,
    /// The model that produced it.
    pub model: String,
    /// How long it may be served.
    pub ttl: Duration,
}

impl CachedResponse {
    /// Bytes the entry occupies, for the size bound.
    #[must_use]
    pub fn weight(&self) -> u32 {
        u32::try_from(self.message.len() + self.model.len() + 64).unwrap_or(u32::MAX)
    }
}

/// Counters every store keeps (exported as metrics by the gateway).
#[derive(Debug, Default)]
pub struct Counters {
    /// Lookups that found an entry.
    pub hits: AtomicU64,
    /// Lookups that found none.
    pub misses: AtomicU64,
    /// Entries stored.
    pub stores: AtomicU64,
    /// Entries dropped to stay within the size bound.
    pub evictions: AtomicU64,
}

/// A store of cached answers. Keys already include the tenant (see [`crate::key`]).
#[async_trait::async_trait]
pub trait ResponseStore: Send + Sync + std::fmt::Debug {
    /// The entry for `key`, if present and fresh.
    async fn get(&self, key: &CacheKey) -> Option<Arc<CachedResponse>>;
    /// Store (or replace) an entry.
    async fn put(&self, key: CacheKey, value: CachedResponse);
    /// Drop an entry (`x-rampart-cache: refresh` does this before asking upstream).
    async fn remove(&self, key: &CacheKey);
    /// The store's counters.
    fn counters(&self) -> &Counters;
    /// Bytes held now (approximate).
    fn bytes(&self) -> u64;
}

struct PerEntryTtl;

// moka keeps its own clock and its trait names std's Instant; entry lifetimes here are not
// driven by tokio's (pausable) time, so tests of expiry sleep for real.
#[allow(clippy::disallowed_types)]
impl moka::Expiry<String, Arc<CachedResponse>> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<CachedResponse>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Arc<CachedResponse>,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// The in-process store.
pub struct MemoryStore {
    cache: moka::future::Cache<String, Arc<CachedResponse>>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.cache.entry_count())
            .field("bytes", &self.cache.weighted_size())
            .finish()
    }
}

impl MemoryStore {
    /// A store holding at most `max_bytes` of entries.
    #[must_use]
    pub fn new(max_bytes: u64) -> Self {
        let counters = Arc::new(Counters::default());
        let evicted = counters.clone();
        let cache = moka::future::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_k: &String, v: &Arc<CachedResponse>| v.weight())
            .expire_after(PerEntryTtl)
            .eviction_listener(move |_k, _v, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evicted.evictions.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build();
        Self { cache, counters }
    }
}

#[async_trait::async_trait]
impl ResponseStore for MemoryStore {
    async fn get(&self, key: &CacheKey) -> Option<Arc<CachedResponse>> {
        let found = self.cache.get(&key.0).await;
        let counter = if found.is_some() {
            &self.counters.hits
        } else {
            &self.counters.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    async fn put(&self, key: CacheKey, value: CachedResponse) {
        self.counters.stores.fetch_add(1, Ordering::Relaxed);
        self.cache.insert(key.0, Arc::new(value)).await;
    }

    async fn remove(&self, key: &CacheKey) {
        self.cache.invalidate(&key.0).await;
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }

    fn bytes(&self) -> u64 {
        self.cache.weighted_size()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(size: usize, ttl: Duration) -> CachedResponse {
        CachedResponse {
            message: Bytes::from(vec![b'x'; size]),
            model: "claude-sonnet-4-6".into(),
            ttl,
        }
    }

    fn k(s: &str) -> CacheKey {
        CacheKey(s.to_owned())
    }

    #[tokio::test]
    async fn stores_finds_and_counts() {
        let s = MemoryStore::new(1 << 20);
        assert!(s.get(&k("a")).await.is_none());
        s.put(k("a"), entry(100, Duration::from_secs(60))).await;
        assert_eq!(s.get(&k("a")).await.unwrap().message.len(), 100);
        s.remove(&k("a")).await;
        assert!(s.get(&k("a")).await.is_none());
        let c = s.counters();
        assert_eq!(c.hits.load(Ordering::Relaxed), 1);
        assert_eq!(c.misses.load(Ordering::Relaxed), 2);
        assert_eq!(c.stores.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn entries_expire_after_their_own_ttl() {
        let s = MemoryStore::new(1 << 20);
        s.put(k("short"), entry(10, Duration::from_millis(50)))
            .await;
        s.put(k("long"), entry(10, Duration::from_secs(60))).await;
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(s.get(&k("short")).await.is_none());
        assert!(s.get(&k("long")).await.is_some());
    }

    #[tokio::test]
    async fn the_byte_bound_holds_by_evicting() {
        let s = MemoryStore::new(10_000);
        for i in 0..100 {
            s.put(k(&format!("k{i}")), entry(1_000, Duration::from_secs(60)))
                .await;
        }
        s.cache.run_pending_tasks().await;
        assert!(s.bytes() <= 10_000, "{} bytes held", s.bytes());
        assert!(s.counters().evictions.load(Ordering::Relaxed) > 0);
    }
}
