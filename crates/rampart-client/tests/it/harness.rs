//! The simulator and the gateway on 127.0.0.1:0, and clients for them.

use std::sync::Arc;
use std::time::Duration;

use rampart_client::types::{MessageCreateParams, MessageParam};
use rampart_client::{Client, Secret};
use serde_json::Value;

pub const MODEL: &str = "claude-sonnet-4-6";
pub const GATEWAY_KEY: &str = "rk-client-test-key";

/// The simulator; stopped on drop.
pub struct Sim {
    pub url: String,
    http: reqwest::Client,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Sim {
    pub async fn start() -> Sim {
        Sim::with(rampart_sim::SimConfig::default()).await
    }

    pub async fn with(cfg: rampart_sim::SimConfig) -> Sim {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(rampart_sim::serve(listener, cfg, async move {
            let _ = stopped.await;
        }));
        Sim {
            url,
            http: reqwest::Client::new(),
            _stop: stop,
        }
    }

    /// A client for the simulator with the SDK defaults (any key works).
    pub fn client(&self) -> Client {
        client(&self.url, "sk-ant-sim-test")
    }

    /// Queues a fault (`POST /_sim/faults`).
    pub async fn fault(&self, fault: Value) {
        let r = self
            .http
            .post(format!("{}/_sim/faults", self.url))
            .json(&fault)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{fault} -> {}", r.status());
    }

    /// Requests that arrived for a route group (`messages`, `count_tokens`, `models`, `batches`).
    pub async fn calls(&self, route: &str) -> u64 {
        self.control("counters").await["routes"][route]
            .as_u64()
            .unwrap()
    }

    /// The last `n` requests with their headers, oldest first.
    pub async fn requests(&self, n: usize) -> Vec<Value> {
        let log = self.control(&format!("requests?limit={n}")).await;
        log.as_array().unwrap().clone()
    }

    async fn control(&self, path: &str) -> Value {
        let url = format!("{}/_sim/{path}", self.url);
        let r = self.http.get(url).send().await.unwrap();
        r.json().await.unwrap()
    }
}

/// A client for `url` with `key` and the SDK defaults.
pub fn client(url: &str, key: &str) -> Client {
    Client::builder()
        .base_url(url)
        .api_key(Secret::new(key.to_owned()))
        .build()
        .unwrap()
}

/// A client whose backoff is short (10 ms doubling to 40 ms), for tests about call counts.
pub fn quick(url: &str) -> Client {
    quick_with_key(url, "sk-ant-sim-test")
}

/// [`quick`] with another key.
pub fn quick_with_key(url: &str, key: &str) -> Client {
    Client::builder()
        .base_url(url)
        .api_key(Secret::new(key.to_owned()))
        .backoff(Duration::from_millis(10), Duration::from_millis(40))
        .build()
        .unwrap()
}

/// The gateway in front of `upstream`, accepting [`GATEWAY_KEY`]; stopped on drop.
pub struct Gateway {
    pub url: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

pub async fn gateway(upstream: &str) -> Gateway {
    let settings = rampart_gateway::config::load(&rampart_gateway::Sources {
        inline_toml: Some(format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace_secs = 5\n[upstream]\nbase_url = \"{upstream}\"\n"
        )),
        upstream_api_key: Some(Secret::new("sk-ant-upstream".into())),
        client_keys: vec![Secret::new(GATEWAY_KEY.into())],
        ..rampart_gateway::Sources::default()
    })
    .unwrap();
    let auth = Arc::new(settings.keys.clone());
    let gw = rampart_gateway::Gateway::new(settings, auth).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(gw.serve(listener, async move {
        let _ = stopped.await;
    }));
    Gateway { url, _stop: stop }
}

/// A one-turn request.
pub fn ask(text: &str, max_tokens: u64) -> MessageCreateParams {
    MessageCreateParams::new(MODEL, max_tokens, vec![MessageParam::user(text)])
}
