//! In-process HTTP tests: the simulator on 127.0.0.1:0, driven with reqwest.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on purpose

mod batches;
mod caching;
mod control;
mod faults;
mod messages;
mod models;
mod streaming;

use rampart_sim::SimConfig;
use serde_json::{Value, json};
use tokio::sync::oneshot;

#[derive(Debug)]
pub struct TestSim {
    pub base: String,
    pub client: reqwest::Client,
    _stop: oneshot::Sender<()>,
}

pub async fn spawn() -> TestSim {
    spawn_with(SimConfig::default()).await
}

pub async fn spawn_with(cfg: SimConfig) -> TestSim {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(rampart_sim::serve(listener, cfg, async move {
        let _ = stopped.await;
    }));
    TestSim {
        base,
        client: reqwest::Client::new(),
        _stop: stop,
    }
}

impl TestSim {
    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{path}", self.base))
            .header("x-api-key", "sk-test")
            .header("anthropic-version", "2023-06-01")
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .get(format!("{}{path}", self.base))
            .header("x-api-key", "sk-test")
            .header("anthropic-version", "2023-06-01")
    }

    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .delete(format!("{}{path}", self.base))
            .header("x-api-key", "sk-test")
            .header("anthropic-version", "2023-06-01")
    }

    /// POST /v1/messages; returns (status, body).
    pub async fn message(&self, body: &Value) -> (u16, Value) {
        let r = self.post("/v1/messages").json(body).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    /// POST /v1/messages with stream: true; returns the raw SSE text.
    pub async fn stream_text(&self, body: &Value) -> String {
        let mut body = body.clone();
        body["stream"] = json!(true);
        let r = self.post("/v1/messages").json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    /// GET an API path; returns (status, JSON body).
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.get(path).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    pub async fn fault(&self, spec: Value) -> Value {
        let r = self
            .client
            .post(format!("{}/_sim/faults", self.base))
            .json(&spec)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    pub async fn sim_get(&self, path: &str) -> Value {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

pub fn hello(text: &str) -> Value {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 1000,
        "messages": [{"role": "user", "content": text}]})
}

/// Parses SSE text into (event name, data JSON) pairs.
pub fn events(sse: &str) -> Vec<(String, Value)> {
    sse.split("\n\n")
        .filter(|f| !f.trim().is_empty())
        .map(|frame| {
            let mut name = String::new();
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_owned();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            (name, serde_json::from_str(&data).unwrap())
        })
        .collect()
}

/// The text of a message's text blocks.
pub fn text_of(message: &Value) -> String {
    message["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "text")
        .map(|b| b["text"].as_str().unwrap())
        .collect()
}
