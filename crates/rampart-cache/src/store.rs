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

/// The shared store: entries in Redis under `PREFIX:rc:<key>` with the entry's TTL (`SET … PX`),
/// so every instance answers from one cache. The size bound is Redis's own (`maxmemory` with an
/// LRU or LFU eviction policy); an entry is one value, at most the capture limit.
///
/// Failures never fail a request: a lookup that errors is a miss, a store that errors is dropped
/// (both counted in [`Counters::errors`]).
pub struct RedisStore {
    conn: redis::aio::ConnectionManager,
    prefix: String,
    counters: Counters,
    errors: AtomicU64,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

const REDIS_FORMAT: &[u8] = b"rc1\n";

impl RedisStore {
    /// A store on `url` (`redis://…`), keys under `prefix`; connects lazily and reconnects by
    /// itself, giving up on a call after `timeout`.
    ///
    /// # Errors
    /// When the URL cannot be parsed (the message does not repeat it).
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self, String> {
        let client = redis::Client::open(url)
            .map_err(|e| format!("cache.redis_url is not a Redis URL ({})", e.category()))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("cannot set up the Redis connection: {}", e.category()))?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            counters: Counters::default(),
            errors: AtomicU64::new(0),
        })
    }

    fn redis_key(&self, key: &CacheKey) -> String {
        format!("{}:rc:{}", self.prefix, key.0)
    }

    /// Redis calls that failed (treated as misses or dropped stores).
    #[must_use]
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    fn encode(value: &CachedResponse) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(REDIS_FORMAT.len() + value.model.len() + 1 + value.message.len());
        out.extend_from_slice(REDIS_FORMAT);
        out.extend_from_slice(value.model.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(&value.message);
        out
    }

    fn decode(raw: &[u8], ttl: Duration) -> Option<CachedResponse> {
        let rest = raw.strip_prefix(REDIS_FORMAT)?;
        let nl = rest.iter().position(|b| *b == b'\n')?;
        let model = std::str::from_utf8(&rest[..nl]).ok()?.to_owned();
        Some(CachedResponse {
            message: Bytes::copy_from_slice(&rest[nl + 1..]),
            model,
            ttl,
        })
    }
}

#[async_trait::async_trait]
impl ResponseStore for RedisStore {
    async fn get(&self, key: &CacheKey) -> Option<Arc<CachedResponse>> {
        let mut conn = self.conn.clone();
        let k = self.redis_key(key);
        let got: redis::RedisResult<(Option<Vec<u8>>, i64)> =
            redis::pipe().get(&k).pttl(&k).query_async(&mut conn).await;
        let found = match got {
            Ok((Some(raw), pttl)) => {
                let left = Duration::from_millis(u64::try_from(pttl).unwrap_or(0));
                Self::decode(&raw, left).map(Arc::new)
            }
            Ok((None, _)) => None,
            Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                None
            }
        };
        let counter = if found.is_some() {
            &self.counters.hits
        } else {
            &self.counters.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    async fn put(&self, key: CacheKey, value: CachedResponse) {
        let mut conn = self.conn.clone();
        let ms = u64::try_from(value.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let set: redis::RedisResult<()> = redis::cmd("SET")
            .arg(self.redis_key(&key))
            .arg(Self::encode(&value))
            .arg("PX")
            .arg(ms)
            .query_async(&mut conn)
            .await;
        match set {
            Ok(()) => {
                self.counters.stores.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    async fn remove(&self, key: &CacheKey) {
        let mut conn = self.conn.clone();
        let del: redis::RedisResult<i64> = redis::cmd("DEL")
            .arg(self.redis_key(key))
            .query_async(&mut conn)
            .await;
        if del.is_err() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }

    fn bytes(&self) -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn the_memory_store_holds_its_byte_bound_by_evicting() {
        let s = MemoryStore::new(10_000);
        for i in 0..100 {
            let value = CachedResponse {
                message: Bytes::from(vec![b'x'; 1_000]),
                model: "claude-sonnet-4-6".into(),
                ttl: Duration::from_secs(60),
            };
            s.put(CacheKey(format!("k{i}")), value).await;
        }
        s.cache.run_pending_tasks().await;
        assert!(s.bytes() <= 10_000, "{} bytes held", s.bytes());
        assert!(s.counters().evictions.load(Ordering::Relaxed) > 0);
    }
}
