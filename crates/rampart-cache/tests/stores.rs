//! One behaviour, two stores: every test here runs against the in-process store and against Redis
//! (`RAMPART_TEST_REDIS_URL`; skipped loudly when unset, a failure when `CI` is set).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use rampart_cache::key::key_of;
use rampart_cache::store::RedisStore;
use rampart_cache::{CacheKey, CachedResponse, MemoryStore, ResponseStore};
use serde_json::json;

fn redis() -> Option<RedisStore> {
    match std::env::var("RAMPART_TEST_REDIS_URL") {
        Ok(url) => {
            let prefix = format!("rampart-test-{}", std::process::id());
            Some(RedisStore::new(&url, &prefix, Duration::from_secs(2)).unwrap())
        }
        Err(_) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but RAMPART_TEST_REDIS_URL is not: the Redis half of the cache store suite must run"
            );
            eprintln!(
                "\n#### SKIPPING the Redis cache-store tests: RAMPART_TEST_REDIS_URL is unset ####\n"
            );
            None
        }
    }
}

fn stores() -> Vec<(&'static str, Arc<dyn ResponseStore>)> {
    let mut v: Vec<(&'static str, Arc<dyn ResponseStore>)> =
        vec![("memory", Arc::new(MemoryStore::new(1 << 20)))];
    if let Some(r) = redis() {
        v.push(("redis", Arc::new(r)));
    }
    v
}

fn entry(text: &str, ttl: Duration) -> CachedResponse {
    CachedResponse {
        message: Bytes::from(
            json!({"type": "message", "content": [{"type": "text", "text": text}]}).to_string(),
        ),
        model: "claude-sonnet-4-6".into(),
        ttl,
    }
}

fn unique(tag: &str) -> CacheKey {
    CacheKey(format!("{tag}-{}", uuid_like()))
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{n:x}")
}

#[tokio::test]
async fn stores_finds_replaces_removes_and_counts() {
    for (name, s) in stores() {
        let k = unique("a");
        assert!(s.get(&k).await.is_none(), "{name}");
        s.put(k.clone(), entry("first", Duration::from_secs(60)))
            .await;
        let got = s.get(&k).await.unwrap();
        assert_eq!(got.model, "claude-sonnet-4-6", "{name}");
        assert!(
            String::from_utf8_lossy(&got.message).contains("first"),
            "{name}"
        );
        assert!(
            got.ttl <= Duration::from_secs(60) && got.ttl > Duration::from_secs(50),
            "{name}: {:?}",
            got.ttl
        );
        s.put(k.clone(), entry("second", Duration::from_secs(60)))
            .await;
        assert!(
            String::from_utf8_lossy(&s.get(&k).await.unwrap().message).contains("second"),
            "{name}"
        );
        s.remove(&k).await;
        assert!(s.get(&k).await.is_none(), "{name}");
        let c = s.counters();
        assert_eq!(c.hits.load(Ordering::Relaxed), 2, "{name}");
        assert_eq!(c.misses.load(Ordering::Relaxed), 2, "{name}");
        assert_eq!(c.stores.load(Ordering::Relaxed), 2, "{name}");
    }
}

#[tokio::test]
async fn entries_expire_after_their_own_ttl() {
    for (name, s) in stores() {
        let short = unique("short");
        let long = unique("long");
        s.put(short.clone(), entry("x", Duration::from_millis(100)))
            .await;
        s.put(long.clone(), entry("y", Duration::from_secs(60)))
            .await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(s.get(&short).await.is_none(), "{name}");
        assert!(s.get(&long).await.is_some(), "{name}");
    }
}

#[tokio::test]
async fn one_teams_entry_is_never_found_with_another_teams_key() {
    let body = json!({"model": "claude-sonnet-4-6", "max_tokens": 10, "messages": [{"role": "user", "content": "secret plan"}]});
    let a = key_of("team-a", &[], &body).unwrap();
    let b = key_of("team-b", &[], &body).unwrap();
    for (name, s) in stores() {
        s.put(a.clone(), entry("team A's answer", Duration::from_secs(60)))
            .await;
        assert!(
            s.get(&b).await.is_none(),
            "{name}: team B read team A's entry"
        );
        assert!(s.get(&a).await.is_some(), "{name}");
        s.remove(&a).await;
    }
}
