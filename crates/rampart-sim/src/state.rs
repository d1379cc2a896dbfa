//! Shared simulator state: configuration, catalogue, counters, the request log, faults, the prompt
//! cache and batches. Hot-path updates are atomics or short critical sections.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, Method, Uri};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::batches::Batches;
use crate::cache::PromptCache;
use crate::faults::Faults;
use crate::models::Catalogue;

/// The API route families, used by counters and fault matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RouteGroup {
    /// `POST /v1/messages`.
    Messages,
    /// `POST /v1/messages/count_tokens`.
    CountTokens,
    /// `/v1/models*`.
    Models,
    /// `/v1/messages/batches*`.
    Batches,
}

impl RouteGroup {
    const ALL: [Self; 4] = [
        Self::Messages,
        Self::CountTokens,
        Self::Models,
        Self::Batches,
    ];

    const fn name(self) -> &'static str {
        match self {
            Self::Messages => "messages",
            Self::CountTokens => "count_tokens",
            Self::Models => "models",
            Self::Batches => "batches",
        }
    }
}

/// Settings copied out of [`crate::SimConfig`].
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub latency_ms: u64,
    pub tokens_per_sec: f64,
    pub batch_processing_ms: u64,
    pub api_key: Option<String>,
    pub base_url: String,
}

/// Everything the handlers share.
#[derive(Debug)]
pub(crate) struct Sim {
    pub settings: Settings,
    pub catalogue: Catalogue,
    pub counters: Counters,
    pub log: RequestLog,
    pub faults: Faults,
    pub cache: PromptCache,
    pub batches: Batches,
}

impl Sim {
    /// `POST /_sim/reset`: zero counters, clear faults, cache, batches and the log.
    pub(crate) fn reset(&self) {
        self.counters.reset();
        self.faults.clear();
        self.cache.clear();
        self.batches.clear();
        self.log.clear();
    }
}

/// Request counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    total: AtomicU64,
    routes: [AtomicU64; 4],
    models: Mutex<HashMap<String, u64>>,
}

impl Counters {
    /// Counts an arriving API request.
    pub(crate) fn arrive(&self, group: Option<RouteGroup>, model: Option<&str>) {
        self.total.fetch_add(1, Ordering::Relaxed);
        if let Some(g) = group {
            self.routes[g as usize].fetch_add(1, Ordering::Relaxed);
        }
        if let Some(model) = model
            && let Ok(mut m) = self.models.lock()
        {
            match m.get_mut(model) {
                Some(n) => *n += 1,
                None => {
                    m.insert(model.to_owned(), 1);
                }
            }
        }
    }

    fn reset(&self) {
        self.total.store(0, Ordering::Relaxed);
        for r in &self.routes {
            r.store(0, Ordering::Relaxed);
        }
        if let Ok(mut m) = self.models.lock() {
            m.clear();
        }
    }

    /// `GET /_sim/counters` body.
    pub(crate) fn snapshot(&self) -> Value {
        let routes: Map<String, Value> = RouteGroup::ALL
            .iter()
            .map(|g| {
                (
                    g.name().to_owned(),
                    json!(self.routes[*g as usize].load(Ordering::Relaxed)),
                )
            })
            .collect();
        let models: Map<String, Value> = self
            .models
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
            .unwrap_or_default();
        json!({"total": self.total.load(Ordering::Relaxed), "routes": routes, "models": models})
    }
}

/// Capacity of the request log.
pub(crate) const LOG_CAPACITY: usize = 200;

#[derive(Debug)]
struct Logged {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    model: Option<String>,
}

/// Ring buffer of the last [`LOG_CAPACITY`] API requests.
#[derive(Debug, Default)]
pub(crate) struct RequestLog {
    entries: Mutex<VecDeque<Logged>>,
}

impl RequestLog {
    /// Records a request (headers are cheap to clone: values share their buffers).
    pub(crate) fn push(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        model: Option<&str>,
    ) {
        let entry = Logged {
            method: method.clone(),
            uri: uri.clone(),
            headers: headers.clone(),
            model: model.map(str::to_owned),
        };
        if let Ok(mut q) = self.entries.lock() {
            if q.len() == LOG_CAPACITY {
                q.pop_front();
            }
            q.push_back(entry);
        }
    }

    fn clear(&self) {
        if let Ok(mut q) = self.entries.lock() {
            q.clear();
        }
    }

    /// The last `limit` entries, oldest first, as JSON.
    pub(crate) fn last(&self, limit: usize) -> Value {
        let Ok(q) = self.entries.lock() else {
            return json!([]);
        };
        let skip = q.len().saturating_sub(limit);
        let out: Vec<Value> = q
            .iter()
            .skip(skip)
            .map(|e| {
                let mut headers = Map::new();
                for name in e.headers.keys() {
                    let joined = e
                        .headers
                        .get_all(name)
                        .iter()
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .collect::<Vec<_>>()
                        .join(", ");
                    headers.insert(name.as_str().to_owned(), Value::String(joined));
                }
                json!({
                    "method": e.method.as_str(),
                    "path": e.uri.path(),
                    "query": e.uri.query(),
                    "headers": headers,
                    "model": e.model,
                })
            })
            .collect();
        Value::Array(out)
    }
}
