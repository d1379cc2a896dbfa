//! A migrated SQLite store in a temporary directory, and helpers to make keys in it.

use std::ops::Deref;
use std::path::PathBuf;

use rampart_crypto::Secret;
use rampart_crypto::apikey::KeyHasher;
use rampart_store::{ApiKey, NewApiKey, Store, Team};

/// A store that removes its directory on drop.
pub struct TestStore {
    store: Store,
    dir: PathBuf,
}

impl Deref for TestStore {
    type Target = Store;

    fn deref(&self) -> &Store {
        &self.store
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl TestStore {
    pub async fn new() -> TestStore {
        let dir = std::env::temp_dir().join(format!("rampart-gw-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&rampart_store::sqlite_url(&dir)).await.unwrap();
        store.migrate().await.unwrap();
        TestStore { store, dir }
    }

    pub fn store(&self) -> Store {
        self.store.clone()
    }

    pub async fn team(&self, name: &str) -> Team {
        self.create_team(name, None).await.unwrap()
    }

    /// A new key in `team` with the given model scopes; returns the key and its row.
    pub async fn key(&self, team: &Team, models: &[&str]) -> (String, ApiKey) {
        let new = hasher().generate("live");
        let row = self
            .create_api_key(
                &NewApiKey {
                    team_id: team.id,
                    user_id: None,
                    name: "test".into(),
                    prefix: new.prefix.clone(),
                    key_hash: new.digest.0.to_vec(),
                    allowed_models: models.iter().map(|m| (*m).to_owned()).collect(),
                    allowed_endpoints: vec![],
                    expires_at: None,
                },
                None,
            )
            .await
            .unwrap();
        (new.key.expose().to_owned(), row)
    }

    /// A new key in `team` with its own `limits`; returns the key and its row.
    pub async fn key_with_limits(
        &self,
        team: &Team,
        limits: &rampart_store::LimitSettings,
    ) -> (String, ApiKey) {
        let new = hasher().generate("live");
        let row = self
            .limits()
            .create_api_key_with_limits(
                &NewApiKey {
                    team_id: team.id,
                    user_id: None,
                    name: "limited".into(),
                    prefix: new.prefix.clone(),
                    key_hash: new.digest.0.to_vec(),
                    allowed_models: vec![],
                    allowed_endpoints: vec![],
                    expires_at: None,
                },
                limits,
                None,
            )
            .await
            .unwrap();
        (new.key.expose().to_owned(), row)
    }
}

pub fn hasher() -> KeyHasher {
    KeyHasher::new(Secret::new("pepper-".repeat(6))).unwrap()
}

/// The simulator on 127.0.0.1:0, accepting only `api_key` when given; stopped on drop.
pub struct TestSim {
    pub url: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl TestSim {
    /// Queue a fault at the simulator (`POST /_sim/faults`).
    pub async fn fault(&self, spec: serde_json::Value) {
        let r = reqwest::Client::new()
            .post(format!("{}/_sim/faults", self.url))
            .json(&spec)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{spec}");
    }

    /// Messages requests that reached the simulator.
    pub async fn messages_served(&self) -> u64 {
        messages_served(&reqwest::Client::new(), &self.url).await
    }
}

/// Messages requests that reached the simulator at `url`.
pub async fn messages_served(http: &reqwest::Client, url: &str) -> u64 {
    sim_counters(http, url).await["routes"]["messages"]
        .as_u64()
        .unwrap_or(0)
}

/// The simulator's request counters (`GET /_sim/counters`).
pub async fn sim_counters(http: &reqwest::Client, url: &str) -> serde_json::Value {
    http.get(format!("{url}/_sim/counters"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

pub async fn sim(api_key: Option<&str>) -> TestSim {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let cfg = rampart_sim::SimConfig {
        api_key: api_key.map(str::to_owned),
        ..rampart_sim::SimConfig::default()
    };
    tokio::spawn(rampart_sim::serve(listener, cfg, async move {
        let _ = stopped.await;
    }));
    TestSim { url, _stop: stop }
}

/// Validated settings for a gateway in front of `upstream` on 127.0.0.1:0, with an upstream key
/// in the configuration when one is given.
pub fn settings(upstream: &str, upstream_key: Option<&str>) -> rampart_gateway::Settings {
    rampart_gateway::config::load(&rampart_gateway::Sources {
        inline_toml: Some(format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace_secs = 5\n[upstream]\nbase_url = \"{upstream}\"\n"
        )),
        upstream_api_key: upstream_key.map(|k| Secret::new(k.to_owned())),
        store_keys: true,
        store_credentials: true,
        ..rampart_gateway::Sources::default()
    })
    .unwrap()
}

/// A running gateway; [`TestGateway::stop`] shuts it down gracefully.
pub struct TestGateway {
    pub url: String,
    pub http: reqwest::Client,
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
}

pub async fn serve(gateway: rampart_gateway::Gateway) -> TestGateway {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(gateway.serve(listener, async move {
        let _ = stopped.await;
    }));
    TestGateway {
        url,
        http: reqwest::Client::new(),
        stop,
        served,
    }
}

impl TestGateway {
    /// `POST path` with `key` and a JSON body; returns the status and the JSON response.
    pub async fn post(
        &self,
        path: &str,
        key: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let resp = self.send(path, key, body).await;
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    }

    /// `POST path` with `key` and a JSON body; the response as it came.
    pub async fn send(&self, path: &str, key: &str, body: &serde_json::Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.url))
            .header("x-api-key", key)
            .header("anthropic-version", "2023-06-01")
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.served.await.unwrap().unwrap();
    }
}

/// A Messages request body for `model`.
pub fn message(model: &str) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "echo: hi"}]
    })
}
